"""KV-cache generation, sampling filters, the Python API and export."""

import pytest
import torch
from helpers import DEFAULT_PARTS, MODEL_OPTIONS, option_model

from lit_gpt_char.core.cpu_decode import quantize_int8
from lit_gpt_char.core.generation import Decoder, KVCache, generate, sample_logits
from lit_gpt_char.core.model import GPT
from lit_gpt_char.errors import UserError
from lit_gpt_char.export import export
from lit_gpt_char.loading import load_checkpoint, load_generator


@pytest.mark.parametrize("options", MODEL_OPTIONS, ids=[str(o) or "gpt2" for o in MODEL_OPTIONS])
@pytest.mark.parametrize("batch, prompt_len", [(1, 1), (1, 5), (3, 1), (3, 7)])
def test_cached_logits_equal_full_forward(batch, prompt_len, options):
    """The decode path (Decoder: weights bound into functions) and forward(cache=...) chunks of any
    length both give the full forward's logits at every position."""
    m = option_model(**options)
    seq = torch.randint(0, 13, (batch, 16))
    decoder, cache = Decoder(m, batch), KVCache.for_model(m, batch)
    with torch.no_grad():
        full, _ = m(seq)
        steps = [decoder.prefill(seq[:, :prompt_len])]
        chunks = [m(seq[:, :prompt_len], cache=cache)[0][:, -1]]
        t = prompt_len
        while t < 16:  # chunks of 1, 2, 3, ... positions after the prompt
            n = min(16 - t, len(chunks))
            for i in range(n):
                steps.append(decoder.step(seq[:, t + i]))
            logits = m(seq[:, t : t + n], cache=cache)[0]
            chunks += [logits[:, i] for i in range(n)]
            t += n
        assert decoder.full
        with pytest.raises(ValueError, match="past block_size"):
            decoder.step(seq[:, 0])
    assert len(steps) == len(chunks) == 16 - prompt_len + 1
    for i, (got, chunk) in enumerate(zip(steps, chunks)):
        want = full[:, prompt_len - 1 + i]
        assert (got - want).abs().max() < 1e-4 and (chunk - want).abs().max() < 1e-4


@pytest.mark.parametrize("options", MODEL_OPTIONS, ids=[str(o) or "gpt2" for o in MODEL_OPTIONS])
def test_int8_decode_tracks_its_own_full_forward(options):
    """With int8 weights, the decode steps still compute what the (int8) model's full forward does."""
    m = quantize_int8(option_model(**options).to(torch.bfloat16))
    seq = torch.randint(0, 13, (2, 16))
    decoder = Decoder(m, 2)
    with torch.no_grad():
        full = m(seq)[0].float()
        decoder.prefill(seq[:, :4])
        for t in range(4, 16):
            assert (decoder.step(seq[:, t]).float() - full[:, t]).abs().max() < 0.05


def test_decoder_follows_the_model_dtype():
    """bf16 weights: the step stays in bf16 (its cache in float32 on a CPU) and tracks forward."""
    m = option_model().to(torch.bfloat16)
    seq = torch.randint(0, 13, (2, 16))
    decoder = Decoder(m, 2)
    with torch.no_grad():
        full = m(seq)[0].float()
        decoder.prefill(seq[:, :3])
        for t in range(3, 16):
            got = decoder.step(seq[:, t])
            assert got.dtype == torch.bfloat16
            assert (got.float() - full[:, t]).abs().max() < 0.05
    assert decoder.cache.k[0].dtype == torch.float32 and decoder.cache.dtype == torch.float32


def reference_greedy(m: GPT, prompt: torch.Tensor, n: int, slide: int) -> torch.Tensor:
    """Full forward passes over exactly the context generate_stream's docstring promises."""
    w, seq, ctx = m.config.block_size, prompt.clone(), min(prompt.shape[1], m.config.block_size)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = m(seq[:, -ctx:])
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            ctx = ctx + 1 if ctx < w else w - slide + 1
    return seq


@pytest.mark.parametrize("slide", [1, 4, 8, 16])
def test_sliding_window_past_block_size(slide):
    m = option_model(block_size=16)
    prompt = torch.randint(0, 13, (2, 5))
    got = generate(m, prompt, 50, temperature=0, slide=slide)
    assert torch.equal(got, reference_greedy(m, prompt, 50, slide))


def test_slide_one_is_the_crop_rule():
    m = option_model(block_size=16)
    seq = torch.randint(0, 13, (1, 3))
    with torch.no_grad():
        for _ in range(40):
            seq = torch.cat([seq, m(seq[:, -16:])[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generate(m, seq[:, :3], 40, temperature=0, slide=1), seq)


def test_long_prompt_is_cropped_to_the_block():
    m = option_model(block_size=16)
    prompt = torch.randint(0, 13, (1, 40))
    out = generate(m, prompt, 5, temperature=0)
    assert out.shape == (1, 45) and torch.equal(out[:, :40], prompt)


def test_greedy_is_argmax_of_full_forward():
    m = option_model()
    prompt = torch.randint(0, 13, (2, 4))
    out = generate(m, prompt, 8, temperature=0)
    with torch.no_grad():
        for t in range(4, 12):
            assert torch.equal(out[:, t], m(out[:, :t])[0][:, -1].argmax(-1))


def test_seeded_sampling_is_deterministic():
    m = option_model()
    prompt = torch.zeros((1, 1), dtype=torch.long)
    a = generate(m, prompt, 30, generator=torch.Generator().manual_seed(7))
    b = generate(m, prompt, 30, generator=torch.Generator().manual_seed(7))
    c = generate(m, prompt, 30, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_k_and_top_p_never_leave_their_set():
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    g = torch.Generator().manual_seed(0)
    topk = set()
    for row in range(4):
        allowed = set(torch.topk(logits[row], 5).indices.tolist())
        probs = logits[row].softmax(-1)
        order = probs.argsort(descending=True)
        cum = probs[order].cumsum(0)
        nucleus = set(order[: int((cum < 0.6).sum()) + 1].tolist())
        for _ in range(300):
            assert int(sample_logits(logits[row : row + 1], 1.0, top_k=5, generator=g)) in allowed
            assert int(sample_logits(logits[row : row + 1], 1.0, top_p=0.6, generator=g)) in nucleus
            topk.add(int(sample_logits(logits[row : row + 1], 1.0, top_k=5, generator=g)))
    assert len(topk) > 5  # rows differ, so the union is larger than one row's set


@pytest.mark.parametrize("temperature", [1e-30, 1e-39, 1e-45, 5.88e-123, 5e-324])
def test_a_temperature_too_small_for_float32_is_the_greedy_limit(temperature):
    """A temperature that rounds to 0 in float32 made 0/0 (a NaN, and multinomial raised); it samples
    the largest logits, as any small temperature does, every tied one in turn."""
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[0.5, 3.0, -2.0, 2.9999], [1.0, 4.0, 4.0, -1.0]])
    picks = [sample_logits(logits, temperature, top_k=3, top_p=0.9, generator=g).tolist() for _ in range(60)]
    assert {p[0] for p in picks} == {int(logits[0].float().argmax())}
    assert {p[1] for p in picks} == {1, 2}  # a tie of two: both, as in the limit


def test_python_api_and_export_round_trip(trained_run, tmp_path):
    gen = load_generator(trained_run, device="cpu")
    text = gen.generate("the king", max_new_tokens=40, seed=3)
    assert text.startswith("the king") and len(text) == len("the king") + 40
    assert "".join(gen.stream("the king", max_new_tokens=40, seed=3)) == text[len("the king") :]

    out = export(trained_run, tmp_path / "exported")
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "tokenizer.json", "config.json"}
    assert load_generator(out, device="cpu").generate("the king", max_new_tokens=40, seed=3) == text
    (out / "config.json").unlink()  # the default parts cannot be read off the weights: config.json is needed
    from lit_gpt_char.core.exports import load_exported

    with pytest.raises(UserError, match=r"put the config\.json exported with them beside it"):
        load_exported(out / "model.safetensors", out / "tokenizer.json", n_head=4)


def test_checkpoint_has_no_compile_prefix_and_loads_weights_only(trained_run):
    loaded = load_checkpoint(trained_run)
    assert loaded.source.name.startswith("best-")
    assert not any("_orig_mod" in k for k in loaded.state_dict)
    assert set(loaded.state_dict) == set(GPT(loaded.config).state_dict())


def test_int8_weights_stay_close_to_float32(trained_run):
    fp32 = load_generator(trained_run, device="cpu", precision="32")
    int8 = load_generator(trained_run, device="cpu", precision="int8")
    assert int8.num_params == fp32.num_params
    idx = torch.tensor([fp32.tokenizer.encode("the king speaks in the hall.")])
    with torch.no_grad():
        a = fp32.model(idx)[0].float().log_softmax(-1)
        b = int8.model(idx)[0].float().log_softmax(-1)
    assert (a.exp() - b.exp()).abs().max() < 0.05  # probabilities barely move
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9


@pytest.fixture
def compiles(monkeypatch):
    """Decode steps through dynamo with a counting backend that runs the captured graph as it is (the
    capture is what is under test here, not the code inductor makes of it); the count of compiles."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter

    from lit_gpt_char.core import generation

    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(generation.decode_step, fullgraph=True, dynamic=False, backend=counter)
    monkeypatch.setattr(generation, "compiled_step", lambda device: compiled)
    yield counter
    torch._dynamo.reset()


@pytest.mark.parametrize("options", MODEL_OPTIONS, ids=[str(o) or "gpt2" for o in MODEL_OPTIONS])
def test_a_compiled_step_compiles_once_and_writes_what_the_full_forward_does(options, compiles):
    """Greedy text through the compiled step equals full forward passes over the context the docstring
    promises, far past the block (re-prefills, or the rolling cache): one compile for every position."""
    m = option_model(block_size=8, **options)
    prompt = torch.randint(0, 13, (2, 3))
    got = generate(m, prompt, 30, temperature=0, compile=True)
    assert compiles.frame_count == 1
    if m.config.pos_emb == "rope":  # the rolling cache: the eager path's text, itself held to the full forward above
        assert torch.equal(got, generate(m, prompt, 30, temperature=0))
        assert torch.equal(got[:, :8], reference_greedy(m, prompt, 5, slide=4)[:, :8])
    else:
        assert torch.equal(got, reference_greedy(m, prompt, 30, slide=4))
    generate(m, prompt[:, :1], 20, temperature=0, compile=True)  # another prompt, another call: no new compile
    assert compiles.frame_count == 1


@pytest.mark.slow
@pytest.mark.parametrize("options", [{}, DEFAULT_PARTS], ids=["gpt2", "default"])
def test_the_inductor_compiled_step_matches_eager(options):
    """compile=True with torch.compile's own backend: float32 writes the eager path's greedy text, past the
    block size (re-prefills, or the rolling cache) and for two calls in a row; int8 weights (bf16
    activations, rounded at other places once fused) track their own full forward as eager decoding does."""
    m = option_model(block_size=16, **options)
    prompt = torch.randint(0, 13, (1, 3))
    eager = generate(m, prompt, 40, temperature=0)
    for _ in range(2):
        assert torch.equal(generate(m, prompt, 40, temperature=0, compile=True), eager)
    q = quantize_int8(m.to(torch.bfloat16))
    seq = torch.randint(0, 13, (1, 16))
    decoder = Decoder(q, 1, compile=True, rolling=q.config.pos_emb == "rope")
    with torch.no_grad():
        full = q(seq)[0].float()
        decoder.prefill(seq[:, :3])
        for t in range(3, 16):
            assert (decoder.step(seq[:, t]).float() - full[:, t]).abs().max() < 0.05


# --- rotary models roll their cache past the block -----------------------------------------------------------
def crop_rule(m: GPT, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy text from full forward passes over the last block_size characters: the crop rule."""
    seq = prompt
    with torch.no_grad():
        for _ in range(n):
            seq = torch.cat([seq, m(seq[:, -m.config.block_size :])[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq


def test_a_one_layer_rotary_model_rolls_exactly_like_the_crop_rule():
    """With one layer a rotary key depends on its character and the positions' difference only, so
    the rolling cache's attention equals a fresh window's at every step, far past block_size."""
    m = option_model(block_size=8, n_layer=1, pos_emb="rope")
    prompt = torch.randint(0, 13, (2, 3))
    assert torch.equal(generate(m, prompt, 60, temperature=0), crop_rule(m, prompt, 60))


def test_a_rolling_cache_matches_the_full_forward_inside_the_block_and_rolls_on():
    m = option_model(block_size=8, pos_emb="rope", qk_norm=True)
    seq = torch.randint(0, 13, (1, 24))
    decoder = Decoder(m, 1, rolling=True)
    with torch.no_grad():
        full = m(seq[:, :8])[0]
        got = [decoder.prefill(seq[:, :2])] + [decoder.step(seq[:, t]) for t in range(2, 24)]
    for i in range(7):  # positions 1..7: the cache holds everything, exactly the full forward
        assert (got[i] - full[:, i + 1]).abs().max() < 1e-4
    assert decoder.cache.k[0].shape[2] == 8 and decoder.cache.pos == 24  # constant size, positions go on
    assert all(torch.isfinite(g).all() for g in got)
    # Past the block the deeper layer keeps what the crop rule forgets: not the same numbers.
    with torch.no_grad():
        window = m(seq[:, 16:24])[0][:, -1]
    assert (got[-1] - window).abs().max() > 1e-4


def test_an_explicit_slide_turns_rolling_off():
    """slide=1 is the crop rule for every model, rotary ones too (at a full forward per character)."""
    m = option_model(block_size=8, pos_emb="rope")
    prompt = torch.randint(0, 13, (1, 3))
    assert torch.equal(generate(m, prompt, 30, temperature=0, slide=1), crop_rule(m, prompt, 30))


@pytest.mark.parametrize("options", [DEFAULT_PARTS, {"norm": "rmsnorm", "bias": True}], ids=["default", "rmsnorm"])
def test_the_two_operation_norms_of_cpu_decoding_equal_the_models(options):
    """TextGenerator swaps every RMSNorm (QK-norm's too) for x / |x| * sqrt(width) * weight on a CPU: the
    same logits as the model's own norms, in float32 and (to bf16's precision) with int8 weights."""
    from lit_gpt_char.core.cpu_decode import TwoOpRMSNorm
    from lit_gpt_char.core.text_generator import TextGenerator
    from lit_gpt_char.core.tokenizer import CharTokenizer

    m = option_model(**options)
    tok = CharTokenizer([chr(97 + i) for i in range(13)])
    seq = torch.randint(0, 13, (2, 16))
    with torch.no_grad():
        want = m(seq)[0]
        plain = GPT(m.config)
        plain.load_state_dict(m.state_dict())
        gen = TextGenerator(plain, tok, torch.device("cpu"))
        assert any(isinstance(x, TwoOpRMSNorm) for x in gen.model.modules())
        assert not any(type(x) is torch.nn.RMSNorm for x in gen.model.modules())
        assert (gen.model(seq)[0] - want).abs().max() < 1e-4  # the eps it leaves out, on tiny test activations
        kept = GPT(m.config)
        kept.load_state_dict(m.state_dict())
        assert not any(
            isinstance(x, TwoOpRMSNorm)
            for x in TextGenerator(kept, tok, torch.device("cpu"), fast_norms=False).model.modules()
        )
        q = GPT(m.config)
        q.load_state_dict(m.state_dict())
        q8 = TextGenerator(q, tok, torch.device("cpu"), torch.bfloat16, int8=True).model
        ref = quantize_int8(m.to(torch.bfloat16))(seq)[0].float()
        assert (q8(seq)[0].float() - ref).abs().max() < 0.05
