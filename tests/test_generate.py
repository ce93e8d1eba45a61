"""KV-cache generation, sampling filters, the Python API and export."""

import pytest
import torch

from lit_gpt_char.checkpoint import export, load_checkpoint
from lit_gpt_char.generate import load_generator
from lit_gpt_char.model import GPT, Decoder, GPTConfig, KVCache, sample_logits


def model(block_size=16, bias=False) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=13, block_size=block_size, n_layer=2, n_head=2, n_embd=32, dropout=0.1, bias=bias)
    m = GPT(cfg).eval()
    if bias:  # zero-initialized: give them values so a dropped bias would show
        with torch.no_grad():
            for name, p in m.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.1)
    return m


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("batch, prompt_len", [(1, 1), (1, 5), (3, 1), (3, 7)])
def test_cached_logits_equal_full_forward(batch, prompt_len, bias):
    """Both cached paths: Decoder.step (what generation runs) and forward(cache=...) chunks."""
    m = model(bias=bias)
    seq = torch.randint(0, 13, (batch, 16))
    decoder, cache = Decoder(m, batch), KVCache(2, 16)
    with torch.no_grad():
        full, _ = m(seq)
        steps = [decoder.prefill(seq[:, :prompt_len])]
        chunks = [m(seq[:, :prompt_len], cache=cache)[0][:, -1]]
        for t in range(prompt_len, 16):
            steps.append(decoder.step(seq[:, t]))
            chunks.append(m(seq[:, t : t + 1], cache=cache)[0][:, -1])
        assert decoder.full
        with pytest.raises(ValueError, match="past block_size"):
            decoder.step(seq[:, 0])
    for i, (got, chunk) in enumerate(zip(steps, chunks)):
        want = full[:, prompt_len - 1 + i]
        assert (got - want).abs().max() < 1e-4 and (chunk - want).abs().max() < 1e-4


def test_decoder_follows_the_model_dtype():
    """bf16 weights: the step stays in bf16 (its cache in float32 on a CPU) and tracks forward."""
    m = model().to(torch.bfloat16)
    seq = torch.randint(0, 13, (2, 16))
    decoder = Decoder(m, 2)
    with torch.no_grad():
        full = m(seq)[0].float()
        decoder.prefill(seq[:, :3])
        for t in range(3, 16):
            got = decoder.step(seq[:, t])
            assert got.dtype == torch.bfloat16
            assert (got.float() - full[:, t]).abs().max() < 0.05
    assert decoder.cache.k[0].dtype == torch.float32


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
    m = model(block_size=16)
    prompt = torch.randint(0, 13, (2, 5))
    got = m.generate(prompt, 50, temperature=0, slide=slide)
    assert torch.equal(got, reference_greedy(m, prompt, 50, slide))


def test_slide_one_is_the_crop_rule():
    m = model(block_size=16)
    seq = torch.randint(0, 13, (1, 3))
    with torch.no_grad():
        for _ in range(40):
            seq = torch.cat([seq, m(seq[:, -16:])[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(m.generate(seq[:, :3], 40, temperature=0, slide=1), seq)


def test_long_prompt_is_cropped_to_the_block():
    m = model(block_size=16)
    prompt = torch.randint(0, 13, (1, 40))
    out = m.generate(prompt, 5, temperature=0)
    assert out.shape == (1, 45) and torch.equal(out[:, :40], prompt)


def test_greedy_is_argmax_of_full_forward():
    m = model()
    prompt = torch.randint(0, 13, (2, 4))
    out = m.generate(prompt, 8, temperature=0)
    with torch.no_grad():
        for t in range(4, 12):
            assert torch.equal(out[:, t], m(out[:, :t])[0][:, -1].argmax(-1))


def test_seeded_sampling_is_deterministic():
    m = model()
    prompt = torch.zeros((1, 1), dtype=torch.long)
    a = m.generate(prompt, 30, generator=torch.Generator().manual_seed(7))
    b = m.generate(prompt, 30, generator=torch.Generator().manual_seed(7))
    c = m.generate(prompt, 30, generator=torch.Generator().manual_seed(8))
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


def test_python_api_and_export_round_trip(trained_run, tmp_path):
    gen = load_generator(trained_run, device="cpu")
    text = gen.generate("the king", max_new_tokens=40, seed=3)
    assert text.startswith("the king") and len(text) == len("the king") + 40
    assert "".join(gen.stream("the king", max_new_tokens=40, seed=3)) == text[len("the king"):]

    out = export(trained_run, tmp_path / "exported")
    assert {p.name for p in out.iterdir()} == {"model.pt", "tokenizer.json", "config.json"}
    assert load_generator(out, device="cpu").generate("the king", max_new_tokens=40, seed=3) == text
    (out / "config.json").unlink()  # sizes from the weights' shapes, n_head given
    from lit_gpt_char.checkpoint import load_exported
    loaded = load_exported(out / "model.pt", out / "tokenizer.json", n_head=2)
    assert load_generator(loaded, device="cpu").generate("the king", max_new_tokens=40, seed=3) == text


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


@pytest.mark.slow
def test_compiled_decoder_matches_eager():
    """compile=True (torch.compile of Decoder.step, dynamic shapes) writes the same greedy text,
    past the block size (so through re-prefills) and for two calls in a row (no recompiles)."""
    m = model(block_size=16)
    prompt = torch.randint(0, 13, (2, 3))
    eager = m.generate(prompt, 40, temperature=0)
    for _ in range(2):
        assert torch.equal(m.generate(prompt, 40, temperature=0, compile=True), eager)
