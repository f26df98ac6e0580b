"""The redundancy measurements (tinyclip.analysis): CKA on known answers, block and width removal against a
hand-written forward pass and exact parameter arithmetic, and the fast scorer against tinyclip.eval."""
from __future__ import annotations

import pytest
import torch

from tinyclip import analysis
from tinyclip.pruned import param_counts, to_pruned


@pytest.fixture(scope="module")
def teacher():
    from tinyclip.runner import load_model

    torch.manual_seed(0)
    return to_pruned(load_model("TinyCLIP-smoke-teacher", None)).eval()


def test_linear_cka_known_answers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    assert analysis.linear_cka(x, x) == pytest.approx(1.0)
    assert analysis.linear_cka(x, 3.0 * x @ q + 5.0) == pytest.approx(1.0)   # rotation, scale, shift
    unrelated = analysis.linear_cka(x, torch.randn(500, 16, generator=g))
    assert 0.0 <= unrelated < 0.1
    y = torch.cat([x[:, :8], torch.randn(500, 8, generator=g)], dim=1)      # half the directions shared
    assert 0.3 < analysis.linear_cka(x, y) < 0.7
    assert analysis.linear_cka(x, y) == pytest.approx(analysis.linear_cka(y, x))


def test_layer_similarity_is_a_symmetric_unit_diagonal_matrix(teacher):
    tokens = torch.randint(1, 400, (64, teacher.context_length))
    tokens[:, 10] = teacher.vocab_size - 1   # an end-of-text token for the pooling
    m = analysis.layer_similarity(teacher, "text", tokens)
    assert m.shape == (analysis.depth(teacher, "text") + 1,) * 2
    assert (m.diagonal() == 1).all() and (abs(m - m.T) < 1e-12).all() and ((m > 0) & (m <= 1 + 1e-9)).all()


def test_without_layers_skips_exactly_those_blocks(teacher):
    image = torch.randn(4, 3, *teacher.config.vision.image_size)
    cut = analysis.without_layers(teacher, "vision", [1, 2])
    v = teacher.visual
    with torch.no_grad():
        x = v.ln_pre(v.embed(image))
        for i, block in enumerate(v.blocks):
            if i not in (1, 2):
                x = block(x, False)
        expected = v.ln_post(v.pool(x)) @ v.proj
        torch.testing.assert_close(cut.encode_image(image), expected)
        text = torch.randint(1, 400, (4, teacher.context_length))
        torch.testing.assert_close(cut.encode_text(text), teacher.encode_text(text))  # other tower untouched
    d = teacher.config.vision.width
    block = 4 * d + (d + 1) * 3 * d + (d + 1) * d + (d + 1) * 4 * d + (4 * d + 1) * d   # LNs, attention, FFN
    assert param_counts(teacher)["total"] - param_counts(cut)["total"] == 2 * block
    with pytest.raises(Exception, match="cannot remove"):
        analysis.without_layers(teacher, "vision", [99])


def test_thinner_removes_lowest_magnitude_units_and_matches_depth_removal_in_size(teacher):
    torch.testing.assert_close(analysis.thinner(teacher, "text", 0.0).encode_text(torch.ones(2, 16, dtype=torch.long)),
                               teacher.encode_text(torch.ones(2, 16, dtype=torch.long)))
    model = to_pruned(teacher)
    with torch.no_grad():   # make head 2 and neuron 5 of block 0 the weakest
        block = model.text.blocks[0]
        block.attn.in_proj.weight.view(3, block.attn.heads, block.attn.head_dim, -1)[:, 2] *= 1e-3
        block.mlp.c_fc.weight[5] *= 1e-3
    thin = analysis.thinner(model, "text", 0.25)
    cfg = model.config.text
    assert thin.config.text.heads == [h - round(0.25 * h) for h in cfg.heads]
    assert thin.config.text.mlp == [f - round(0.25 * f) for f in cfg.mlp]
    heads, hd = block.attn.heads, block.attn.head_dim
    expected = block.attn.in_proj.weight.view(3, heads, hd, -1)[:, [h for h in range(heads) if h != 2]]
    torch.testing.assert_close(thin.text.blocks[0].attn.in_proj.weight, expected.reshape(-1, cfg.width))
    assert not any(torch.equal(row, block.mlp.c_fc.weight[5]) for row in thin.text.blocks[0].mlp.c_fc.weight)
    # k of L blocks vs k/L of every block's heads and neurons: the same parameters but for LayerNorms and the
    # output biases that width removal keeps (6 d per block's worth)
    layers = analysis.depth(model, "text")
    deep = analysis.without_layers(model, "text", [0])
    wide = analysis.thinner(model, "text", 1 / layers)
    d = cfg.width
    assert param_counts(deep)["total"] - param_counts(wide)["total"] == -6 * d
    random = analysis.thinner(model, "text", 0.25, "random", seed=0)
    assert random.config.text.mlp == thin.config.text.mlp                  # same counts ...
    assert not torch.equal(random.text.blocks[1].mlp.c_fc.weight, thin.text.blocks[1].mlp.c_fc.weight)  # ... other units
    with pytest.raises(Exception, match="rule"):
        analysis.thinner(model, "text", 0.25, "largest")


def test_scorer_matches_evaluate_model(env, teacher):
    import open_clip

    from tinyclip.eval import eval_transform, evaluate_model

    tokenizer = open_clip.get_tokenizer("TinyCLIP-smoke-teacher")
    size = teacher.config.vision.image_size[0]
    preprocess = eval_transform(size, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    scorer = analysis.TowerScorer(teacher, preprocess, tokenizer, env / "smoke" / "eval", batch_size=64)
    cut = analysis.without_layers(teacher, "text", [0])
    for model, changed in ((None, None), (cut, "text")):
        items: dict = {}
        evaluate_model(model if model is not None else teacher, preprocess, tokenizer, env / "smoke" / "eval",
                       batch_size=64, items=items)
        assert scorer.score(model, changed) == items
