"""Qwen3-MoE: parity with transformers' Qwen3MoeForCausalLM, the grouped (ragged_dot) experts
against the dense reference, the load-balancing loss, HF round trips and expert sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from hf_reference import HF_TINY_MOE_CONFIGS

import lopd_jax
from lopd_jax.models import hf, logprobs, moe, qwen3
from lopd_jax.parallel import mesh as mesh_lib
from lopd_jax.parallel import rules
from lopd_jax.training import losses, optimizer, state, step

PARITY_ATOL = 1e-4


def ragged_batch(vocab: int, padding: str, seed: int = 0):
    """Three rows of lengths 13, 9 and 4, padded to 13 on the given side."""
    rng = np.random.RandomState(seed)
    tokens = rng.randint(0, vocab, (3, 13))
    mask = np.zeros_like(tokens)
    for row, n in enumerate([13, 9, 4]):
        mask[row, :n] = 1
        if padding == "left":
            mask[row] = mask[row, ::-1]
    return tokens, mask


@pytest.mark.parametrize("name", sorted(HF_TINY_MOE_CONFIGS))
@pytest.mark.parametrize("padding", ["right", "left"])
def test_logits_match_transformers(hf_tiny, name, padding):
    torch_model, path = hf_tiny(name)
    config, params = hf.load_hf(path)
    assert config.architecture == "Qwen3MoeForCausalLM"
    assert torch_model.config._experts_implementation == "eager"
    hf_config = HF_TINY_MOE_CONFIGS[name]
    for field in ("num_experts", "num_experts_per_tok", "norm_topk_prob"):
        assert getattr(config, field) == hf_config[field]
    tokens, mask = ragged_batch(config.vocab_size, padding)
    with torch.no_grad():
        expected = torch_model(torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits
    positions = logprobs.positions_from_mask(jnp.asarray(mask))
    for implementation in moe.IMPLEMENTATIONS:
        cfg = config.replace(moe_implementation=implementation)
        logits, _ = qwen3.forward(cfg, params, tokens, positions, mask)
        diff = np.abs(np.asarray(logits) - expected.numpy())[mask.astype(bool)].max()
        print(f"parity {name}/{padding}/{implementation}: max |logit diff| = {diff:.2e}")
        assert diff <= PARITY_ATOL, f"{name}/{padding}/{implementation}: {diff:.2e}"


def test_mixed_layers_follow_transformers_rule():
    """mlp_only_layers and decoder_sparse_step pick the dense layers as Qwen3MoeDecoderLayer."""
    for name, kw in HF_TINY_MOE_CONFIGS.items():
        hf_model_config = transformers.Qwen3MoeConfig(
            **{k: v for k, v in kw.items() if k not in ("model_type", "rope_theta")}
        )
        config = hf.config_from_hf(hf_model_config.to_dict())
        layers = transformers.Qwen3MoeForCausalLM(hf_model_config).model.layers
        want = [type(layer.mlp).__name__ == "Qwen3MoeSparseMoeBlock" for layer in layers]
        assert [config.is_moe_layer(i) for i in range(config.num_layers)] == want, name
        groups = qwen3.layer_groups(config)
        assert [g.moe for g in groups for _ in g.layers] == want
    config = hf.config_from_hf(
        transformers.Qwen3MoeConfig(num_hidden_layers=4, mlp_only_layers=[0]).to_dict()
    )
    assert [(g.name, g.layers) for g in qwen3.layer_groups(config)] == [
        ("layers_0", range(0, 1)), ("layers_1", range(1, 4)),
    ]  # fmt: skip


def test_packed_rows_equal_separate_rows():
    """Routing is per token and dropless, so packing changes nothing (no capacity to share)."""
    config = qwen3.PRESETS["tiny-moe"]
    params = qwen3.init_params(config, jax.random.key(1))
    rng = np.random.RandomState(0)
    a, b = rng.randint(0, config.vocab_size, 9), rng.randint(0, config.vocab_size, 5)
    packed = np.concatenate([a, b, [0, 0]])[None]
    positions = np.concatenate([np.arange(9), np.arange(5), [0, 0]])[None]
    segments = np.array([[1] * 9 + [2] * 5 + [0, 0]])
    out, _ = qwen3.forward(config, params, packed, positions, segments)
    alone_a, _ = qwen3.forward(config, params, a[None])
    alone_b, _ = qwen3.forward(config, params, b[None])
    np.testing.assert_allclose(out[0, :9], alone_a[0], atol=1e-5)
    np.testing.assert_allclose(out[0, 9:14], alone_b[0], atol=1e-5)


@pytest.mark.parametrize("num_experts,top_k,norm", [(8, 2, True), (5, 3, False), (4, 4, True)])
def test_ragged_experts_equal_dense_reference_with_gradients(num_experts, top_k, norm):
    rng = np.random.default_rng(num_experts)
    t, d, f = 37, 16, 12
    x = jnp.asarray(rng.normal(size=(t, d)), jnp.float32)
    router = jnp.asarray(rng.normal(size=(d, num_experts)), jnp.float32)
    weights = tuple(
        jnp.asarray(rng.normal(size=s) * 0.3, jnp.float32)
        for s in [(num_experts, d, f), (num_experts, d, f), (num_experts, f, d)]
    )

    def block(implementation, x, router, *weights):
        w, e, _ = moe.route(x, router, top_k, norm)
        return moe.EXPERTS[implementation](x, w, e, *weights)

    cotangent = jnp.asarray(rng.normal(size=(t, d)), jnp.float32)
    results = {}
    for implementation in moe.IMPLEMENTATIONS:
        fn = jax.jit(lambda *a, i=implementation: jnp.sum(block(i, *a) * cotangent))
        results[implementation] = (
            jax.jit(lambda *a, i=implementation: block(i, *a))(x, router, *weights),
            jax.grad(fn, argnums=tuple(range(5)))(x, router, *weights),
        )
    (out_r, grads_r), (out_d, grads_d) = results["ragged"], results["dense"]
    np.testing.assert_allclose(out_r, out_d, atol=1e-5)
    for g_r, g_d in zip(grads_r, grads_d, strict=True):
        np.testing.assert_allclose(g_r, g_d, atol=1e-5)
    assert float(jnp.abs(grads_r[1]).max()) > 0  # the router learns through the top-k weights


def test_load_balancing_loss_matches_transformers():
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    rng = np.random.default_rng(0)
    num_experts, top_k = 6, 2
    layer_logits = [rng.normal(size=(2 * 7, num_experts)).astype(np.float32) for _ in range(3)]
    mask = np.ones((2, 7), np.int64)
    mask[1, 5:] = 0
    want = load_balancing_loss_func(
        tuple(torch.tensor(x) for x in layer_logits), num_experts, top_k, torch.tensor(mask)
    )
    stats = sum(
        moe.router_stats(
            jax.nn.softmax(jnp.asarray(x)),
            jax.lax.top_k(jnp.asarray(x), top_k)[1],
            jnp.asarray(mask.reshape(-1)),
        )
        for x in layer_logits
    )
    np.testing.assert_allclose(moe.load_balancing_loss(stats), float(want), rtol=1e-5)


def test_config_round_trip_keeps_every_moe_field(tmp_path):
    config = qwen3.PRESETS["tiny-moe"].replace(
        num_layers=4, mlp_only_layers=(3,), decoder_sparse_step=1, rope_theta=1e7,
        router_aux_loss_coef=0.01, output_router_logits=True, norm_topk_prob=False,
    )  # fmt: skip
    hf_config = hf.config_to_hf(config)
    assert type(hf_config).__name__ == "Qwen3MoeConfig"
    hf_config.save_pretrained(tmp_path)
    import json

    assert hf.config_from_hf(json.loads((tmp_path / "config.json").read_text())) == config


@pytest.mark.parametrize("name", ["qwen3_moe_e8k2_norm", "qwen3_moe_e4k1_mixed"])
def test_round_trip_through_transformers(hf_tiny, tmp_path, name):
    torch_model, path = hf_tiny(name)
    config, params = lopd_jax.load_hf(path)
    lopd_jax.save_hf(config, params, tmp_path / "export", max_shard_bytes=50_000)
    assert len(list((tmp_path / "export").glob("*.safetensors"))) > 1
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "export", experts_implementation="eager"
    ).eval()
    assert type(reloaded).__name__ == "Qwen3MoeForCausalLM"
    tokens = torch.tensor(np.random.RandomState(0).randint(0, config.vocab_size, (2, 9)))
    with torch.no_grad():
        np.testing.assert_array_equal(reloaded(tokens).logits, torch_model(tokens).logits)
    config2, params2 = lopd_jax.load_hf(tmp_path / "export")
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_expert_weights_are_split_by_expert_over_fsdp(hf_tiny):
    _, path = hf_tiny("qwen3_moe_e8k2_norm")
    config, reference = lopd_jax.load_hf(path)
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig("fsdp"))
    shardings = rules.param_shardings(config, mesh)  # runs assert_params_sufficiently_sharded
    _, sharded = lopd_jax.load_hf(path, shardings=shardings)
    gate = sharded["layers"]["mlp"]["gate_proj"]  # [layers, experts, d, f]: one expert each
    assert gate.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None, None)
    assert gate.addressable_shards[0].data.shape == (2, 1, 48, 24)
    jax.tree.map(np.testing.assert_array_equal, sharded, reference)


# ---------------------------------------------------------------------------- 8 devices

CONFIG = qwen3.PRESETS["tiny-moe"]
OPT = optimizer.make_optimizer(
    optimizer.OptimizerConfig(learning_rate=1e-3, total_steps=10, weight_decay=0.1, eps=1e-4)
)


def _batch(rows=8, length=16, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, CONFIG.vocab_size, (rows, length), dtype=np.int32)
    segments = np.ones_like(tokens)
    segments[:, length - 3 :] = 0
    return {
        "tokens": tokens,
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), tokens.shape).copy(),
        "segment_ids": segments,
        "loss_mask": segments * (np.arange(length) >= 4),
    }


def _forward_and_step(mesh):
    shardings = state.state_shardings(CONFIG, OPT, mesh)
    params = jax.device_put(qwen3.init_params(CONFIG, jax.random.key(0)), shardings.params)
    batch = rules.global_batch(mesh, _batch())
    with rules.activation_sharding(mesh):
        logps = logprobs.next_token_logprobs(
            CONFIG, params, batch["tokens"], batch["positions"], batch["segment_ids"]
        )
    train_state = state.init_state(params, OPT, seed=0, shardings=shardings)
    train_step = step.make_train_step(losses.sft_loss_fn(CONFIG), OPT, shardings, mesh)
    train_state, metrics = train_step(train_state, batch)
    return jax.device_get((logps, train_state.params, metrics))


def test_expert_parallel_forward_and_step_equal_one_device():
    assert jax.device_count() == 8
    one = _forward_and_step(mesh_lib.make_mesh(devices=jax.devices()[:1]))
    eight = _forward_and_step(mesh_lib.make_mesh(mesh_lib.MeshConfig("fsdp")))
    np.testing.assert_allclose(eight[0], one[0], atol=1e-5)
    np.testing.assert_allclose(eight[2]["loss"], one[2]["loss"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), eight[1], one[1])


@pytest.mark.parametrize("name", ["qwen3_moe_e8k2_norm", "qwen3_moe_e4k1_mixed"])
def test_greedy_sampling_matches_generate(hf_tiny, name):
    """Prefill and one-token decode steps over the KV cache (both layer groups of the mixed
    model write their slots) give transformers' greedy continuation."""
    torch_model, path = hf_tiny(name)
    config, params = hf.load_hf(path)
    prompts = [[5, 17, 3], [8, 2, 44, 61, 9, 12, 70], [90]]
    out = lopd_jax.generate(config.replace(decode_block=4), params, prompts, max_new_tokens=8)
    for prompt, tokens in zip(prompts, out.tokens, strict=True):
        ids = torch.tensor([prompt])
        want = torch_model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, min_new_tokens=8,
            do_sample=False, pad_token_id=0,
        )[0, len(prompt) :].tolist()  # fmt: skip
        assert tokens == want


def test_router_loss_in_the_losses_matches_transformers(hf_tiny):
    """With output_router_logits, the SFT loss is transformers' `loss` (cross-entropy +
    coef x aux_loss); the OPD loss gains the same term; without it, nothing changes."""
    torch_model, path = hf_tiny("qwen3_moe_e8k2_norm")
    config, params = hf.load_hf(path)
    tokens = np.random.RandomState(3).randint(0, config.vocab_size, (2, 11))
    batch = {
        "tokens": tokens,
        "positions": np.broadcast_to(np.arange(11), tokens.shape),
        "segment_ids": np.ones_like(tokens),
        "loss_mask": np.ones_like(tokens) * (np.arange(11) > 0),
        "teacher_logprobs": -np.ones(tokens.shape, np.float32),
        "sampler_logprobs": -np.ones(tokens.shape, np.float32),
    }
    coef = 0.5
    on = config.replace(output_router_logits=True, router_aux_loss_coef=coef)
    ids = torch.tensor(tokens)
    torch_model.router_aux_loss_coef = coef
    try:
        with torch.no_grad():
            want = torch_model(ids, labels=ids, output_router_logits=True)
    finally:
        torch_model.router_aux_loss_coef = torch_model.config.router_aux_loss_coef
    stats = qwen3.hidden_states_and_router_stats(config, params, tokens)[2]
    np.testing.assert_allclose(moe.load_balancing_loss(stats), float(want.aux_loss), rtol=1e-5)
    key = jax.random.key(0)
    sft = losses.normalize(*losses.sft_loss_fn(on)(params, batch, key))
    np.testing.assert_allclose(sft, float(want.loss), rtol=1e-5)
    opd = losses.OpdLossConfig()
    opd_on = losses.normalize(*losses.opd_loss_fn(on, opd)(params, batch, key))
    opd_off = losses.normalize(*losses.opd_loss_fn(config, opd)(params, batch, key))
    np.testing.assert_allclose(opd_on - opd_off, coef * float(want.aux_loss), rtol=1e-4)


def test_a_missing_expert_tensor_is_named(hf_tiny, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    _, path = hf_tiny("qwen3_moe_e8k2_norm")
    copy = shutil.copytree(path, tmp_path / "ckpt")
    tensors = load_file(copy / "model.safetensors")
    del tensors["model.layers.1.mlp.experts.5.up_proj.weight"]
    save_file(tensors, copy / "model.safetensors")
    with pytest.raises(hf.CheckpointError, match=r"model.layers.1.mlp.experts.5.up_proj.weight"):
        lopd_jax.load_hf(copy)


def test_identity_counts_moe_fields_of_moe_models_only():
    """Dense models keep the identity they had before the MoE fields existed (stored
    artifacts still match); every MoE field is part of a MoE model's identity."""
    from lopd_jax.models import ref

    dense = qwen3.tiny_config()
    assert not set(qwen3.MOE_FIELDS) & set(ref.architecture_fields(dense))
    sparse = qwen3.PRESETS["tiny-moe"]
    assert set(qwen3.MOE_FIELDS) <= set(ref.architecture_fields(sparse))
    changed = sparse.replace(norm_topk_prob=False)
    assert ref.model_identity(sparse, "params:x") != ref.model_identity(changed, "params:x")
    assert ref.model_identity(sparse, "params:x") == ref.model_identity(
        sparse.replace(moe_implementation="dense"), "params:x"
    )
