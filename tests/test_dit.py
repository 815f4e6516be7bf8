"""Parity of the Stable Audio DiT with stable-audio-tools (and diffusers) on tiny random checkpoints."""

from __future__ import annotations

import copy

import mlx.core as mx
import numpy as np
import pytest

from mlx_audio_generate.errors import UserError
from mlx_audio_generate.stable_audio.dit import DiTConfig, StableAudioDiT
from mlx_audio_generate.weights import Checkpoint, cast
from tests.reference import require
from tests.spy import leading_dims

torch = require("torch")
# transformers records which optional packages exist when first imported: import it before sat.py installs its
# torchvision/torchaudio stand-ins, or diffusers' import later trips over the stand-ins' missing version.
require("transformers")

TOL = 1e-4
STYLES = ["small", "1.0"]


def rel(ours: mx.array, ref) -> float:
    ref = ref.detach().numpy() if hasattr(ref, "detach") else np.asarray(ref)
    return float(np.abs(np.array(ours.astype(mx.float32)) - ref).max() / np.abs(ref).max())


def to_mx(t) -> mx.array:
    return mx.array(t.detach().numpy())


def state_checkpoint(module) -> Checkpoint:
    return Checkpoint({k: to_mx(v) for k, v in module.state_dict().items()}, name="tiny")


def perturb_buffers(module, seed: int) -> None:
    """The builder perturbs parameters only; LayerNorm `beta` is a saved buffer that must be used too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, b in module.named_buffers():
            if name.endswith(".beta"):
                b.add_(torch.randn(b.shape, generator=g) * 0.05)


def load_ours(config: dict, ckpt: Checkpoint, prefix: str) -> StableAudioDiT:
    ours = StableAudioDiT(DiTConfig.from_dict(config))
    ours.load_weights(list(ours.sanitize(ckpt, prefix).items()), strict=True)
    ckpt.finish(ignore=[r"(?!" + prefix.replace(".", r"\.") + r").*"])  # everything of the DiT is used
    return ours


@pytest.fixture(scope="session", params=STYLES)
def tiny(request, tmp_path_factory):
    """(style, model_config dict, reference wrapper, our DiT) per style, built once."""
    from tests.reference.stable_audio import save_tiny_stable_audio

    _, model = save_tiny_stable_audio(tmp_path_factory.mktemp(f"sa-{request.param}"), request.param)
    perturb_buffers(model.model, seed=7)
    config = copy.deepcopy(model_config_of(request.param))
    ours = load_ours(config, state_checkpoint(model), "model.model.")
    return request.param, config, model, ours


def model_config_of(style: str) -> dict:
    from tests.reference.stable_audio import tiny_config

    return tiny_config(style)


def inputs(config: dict, batch: int = 2, length: int = 13, seed: int = 0):
    """Latents, timesteps, cross-attention tokens (zeroed 'padding' rows, as T5 gives) and global cond."""
    d = config["model"]["diffusion"]["config"]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, d["io_channels"], length, generator=g)
    t = torch.rand(batch, generator=g)
    s = 9
    cond = torch.randn(batch, s, d["cond_token_dim"], generator=g)
    mask = torch.ones(batch, s, dtype=torch.bool)
    mask[0, 5:7] = False
    mask[1, 3:7] = False
    cond = cond * mask[..., None]
    glob = torch.randn(batch, d["global_cond_dim"], generator=g)
    return x, t, cond, mask, glob


def ref_call(model, x, t, cond, mask, glob, **kw):
    with torch.no_grad():
        return model(x, t, cross_attn_cond=cond, cross_attn_mask=mask, global_cond=glob, **kw)


def test_config_from_dict():
    small = DiTConfig.from_dict(model_config_of("small"))
    assert (small.qk_norm, small.project_cond_tokens, small.diffusion_objective) == (
        "ln",
        True,
        "rf_denoiser",
    )
    v1 = DiTConfig.from_dict(model_config_of("1.0"))
    assert (v1.qk_norm, v1.project_cond_tokens, v1.diffusion_objective) == ("none", False, "v")
    assert (v1.embed_dim, v1.depth, v1.num_heads, v1.cond_embed_dim, v1.global_cond_dim) == (64, 2, 2, 32, 64)
    assert DiTConfig(io_channels=64, embed_dim=1024, depth=1, num_heads=8).rotary_dim == 64  # small
    assert DiTConfig(io_channels=64, embed_dim=1536, depth=1, num_heads=24).rotary_dim == 32  # 1.0


def test_forward_single_pass(tiny):
    style, config, model, ours = tiny
    x, t, cond, mask, glob = inputs(config)
    ref = ref_call(model.model, x, t, cond, mask, glob, cfg_scale=1.0)
    out = ours(to_mx(x), to_mx(t), to_mx(cond), to_mx(glob), cross_attn_mask=to_mx(mask))
    assert out.shape == tuple(ref.shape)
    assert rel(out, ref) <= TOL, style


def test_mask_is_ignored_like_the_reference(tiny):
    """The zeroed padding tokens are attended to: dropping them changes the output."""
    _, config, model, ours = tiny
    x, t, cond, mask, glob = inputs(config)
    full = ours(to_mx(x), to_mx(t), to_mx(cond), to_mx(glob))
    dropped = ours(to_mx(x[1:]), to_mx(t[1:]), to_mx(cond[1:, :3]), to_mx(glob[1:]))
    assert rel(dropped, np.array(full[1:])) > 1e-3


@pytest.mark.parametrize("negative", [False, True])
def test_cfg_batch_path(tiny, negative):
    style, config, model, ours = tiny
    x, t, cond, mask, glob = inputs(config)
    kw = {}
    neg = neg_mask = None
    if negative:
        _, _, neg, neg_mask, _ = inputs(config, seed=5)
        neg_mask[0, 0] = False  # a masked negative token that is not already zero: must be zeroed
        neg = neg + 0.5
        kw = {"negative_cross_attn_cond": neg, "negative_cross_attn_mask": neg_mask}
    ref = ref_call(model.model, x, t, cond, mask, glob, cfg_scale=7.0, **kw)
    c = ours.cfg_condition(
        to_mx(cond), to_mx(glob), 7.0,
        None if neg is None else to_mx(neg), None if neg_mask is None else to_mx(neg_mask),
    )  # fmt: skip
    assert c.batch == 2 * x.shape[0] and c.cfg_pair
    assert c.null_uncond == (not negative)  # without a negative prompt the blocks skip the null half
    out = ours.guided(to_mx(x), to_mx(t), c, 7.0)
    assert rel(out, ref) <= TOL, style
    # The same conditioning serves every step: only x and t change.
    x2, t2 = x * 0.5, t * 0.3
    ref2 = ref_call(model.model, x2, t2, cond, mask, glob, cfg_scale=7.0, **kw)
    assert rel(ours.guided(to_mx(x2), to_mx(t2), c, 7.0), ref2) <= TOL


def test_null_context_adds_exactly_zero(tiny):
    """Why a CFG pair's unconditional half may skip its cross-attention: the null context's values are
    zero (no bias in the context projection or in `kv`), so the attention's output, and `out` of it, are
    exactly 0 whatever the queries and keys (qk norm included)."""
    style, config, _, ours = tiny
    x, t, cond, mask, glob = inputs(config)
    c = ours.cfg_condition(to_mx(cond), to_mx(glob), 7.0)
    b = x.shape[0]
    h = mx.random.normal((b, 5, ours.config.embed_dim))
    for blk, (k, v) in zip(ours.blocks, c.kv, strict=True):
        assert not mx.any(v[b:]).item(), style
        out = blk.cross_attn.cross(h, k[b:], v[b:])
        assert mx.all(out == 0).item(), style


def test_skipping_the_null_half_changes_nothing(tiny):
    style, config, _, ours = tiny
    x, t, cond, mask, glob = inputs(config)
    c = ours.cfg_condition(to_mx(cond), to_mx(glob), 7.0)
    skipped = ours.guided(to_mx(x), to_mx(t), c, 7.0)
    c.null_uncond = False
    full = ours.guided(to_mx(x), to_mx(t), c, 7.0)
    # float32 rounding only: the cross-attention GEMMs sum half the rows, CFG at 7 amplifies the difference
    assert rel(skipped, np.array(full)) <= 1e-5, style


@pytest.mark.parametrize("null", [True, False])
def test_sharing_the_first_self_attention_changes_nothing(tiny, null):
    """The pair's halves are equal until block 0's cross-attention, so its self-attention runs on B rows."""
    style, config, _, ours = tiny
    x, t, cond, mask, glob = inputs(config)
    c = ours.cfg_condition(to_mx(cond), to_mx(glob), 7.0)
    c.null_uncond = null
    with leading_dims(ours.blocks[0].self_attn) as rows:
        try:
            shared = ours.guided(to_mx(x), to_mx(t), c, 7.0)
            ours.share_first = False
            whole = ours.guided(to_mx(x), to_mx(t), c, 7.0)
        finally:
            ours.share_first = True
    assert rows == [x.shape[0], 2 * x.shape[0]], style
    # float32 rounding only: block 0's GEMMs sum half the rows, CFG at 7 amplifies the difference
    assert rel(shared, np.array(whole)) <= 1e-5, style


def test_cfg_rescale_and_interval(tiny):
    _, config, model, ours = tiny
    x, t, cond, mask, glob = inputs(config)
    c = ours.cfg_condition(to_mx(cond), to_mx(glob), 4.0)
    ref = ref_call(model.model, x, t, cond, mask, glob, cfg_scale=4.0, scale_phi=0.7)
    assert rel(ours.guided(to_mx(x), to_mx(t), c, 4.0, scale_phi=0.7), ref) <= TOL
    # Outside cfg_interval the reference runs the conditional pass only.
    t_hi = torch.full_like(t, 0.95)
    ref = ref_call(model.model, x, t_hi, cond, mask, glob, cfg_scale=4.0, cfg_interval=(0.0, 0.5))
    out = ours.guided(to_mx(x), to_mx(t_hi), c, 4.0, cfg_interval=(0.0, 0.5))
    assert rel(out, ref) <= TOL
    assert rel(out, ref_call(model.model, x, t_hi, cond, mask, glob, cfg_scale=1.0)) <= TOL


def test_cfg_scale_one_is_a_single_pass(tiny):
    _, config, model, ours = tiny
    x, t, cond, mask, glob = inputs(config)
    c = ours.cfg_condition(to_mx(cond), to_mx(glob), 1.0)
    assert c.batch == x.shape[0] and not c.cfg_pair
    ref = ref_call(model.model, x, t, cond, mask, glob, cfg_scale=1.0)
    assert rel(ours.guided(to_mx(x), to_mx(t), c, 1.0), ref) <= TOL


def test_bfloat16_runs_close(tiny):
    _, config, _, ours = tiny
    x, t, cond, _, glob = inputs(config)
    ref = ours(to_mx(x), to_mx(t), to_mx(cond), to_mx(glob))
    half = StableAudioDiT(ours.config)
    half.load_weights(list(cast(dict(_flat(ours.parameters())), "bfloat16").items()), strict=True)
    out = half(to_mx(x), to_mx(t), to_mx(cond), to_mx(glob))
    assert out.dtype == mx.bfloat16
    assert rel(out, np.array(ref)) < 5e-2


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flat(v, f"{prefix}{k}.")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _flat(v, f"{prefix}{i}.")
    else:
        yield prefix[:-1], tree


# -- sizes the tiny configs miss: partial rotary, KV heads 2 of 4 (repeat_interleave grouping), patches ------

VARIANTS = {
    # small-like: head_dim 64 -> rotary 32 of 64, QK LayerNorm, projected tokens, patch_size 2
    "partial-rope-ln-patch": dict(
        io_channels=6, embed_dim=128, depth=2, num_heads=2, cond_token_dim=24, global_cond_dim=16,
        patch_size=2, attn_kwargs={"qk_norm": "ln"}, transformer_type="continuous_transformer",
    ),
    # 1.0-like: head_dim 64 -> rotary 32, unprojected tokens 128 wide = 2 KV heads for 4 query heads
    "partial-rope-gqa": dict(
        io_channels=6, embed_dim=256, depth=2, num_heads=4, cond_token_dim=128, global_cond_dim=48,
        project_cond_tokens=False, transformer_type="continuous_transformer",
    ),
}  # fmt: skip


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request):
    from tests.reference.sat import import_sat

    import_sat()
    from stable_audio_tools.models.diffusion import DiTWrapper

    cfg = VARIANTS[request.param]
    torch.manual_seed(3)
    ref = DiTWrapper(diffusion_objective="v", **copy.deepcopy(cfg)).eval()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    perturb_buffers(ref, seed=5)
    config = {"model": {"diffusion": {"type": "dit", "config": cfg}}}
    ours = load_ours(config, state_checkpoint(ref), "model.")
    return request.param, config, ref, ours


def test_variant_forward_and_cfg(variant):
    name, config, ref, ours = variant
    x, t, cond, mask, glob = inputs(config, length=14)
    assert (
        rel(ours(to_mx(x), to_mx(t), to_mx(cond), to_mx(glob)), ref_call(ref, x, t, cond, mask, glob)) <= TOL
    )
    c = ours.cfg_condition(to_mx(cond), to_mx(glob), 3.0)
    assert (
        rel(ours.guided(to_mx(x), to_mx(t), c, 3.0), ref_call(ref, x, t, cond, mask, glob, cfg_scale=3.0))
        <= TOL
    )


# -- diffusers' StableAudioDiTModel on the same weights (the 1.0 architecture: no QK norm, unprojected) -----


def diffusers_state(sd: dict, prefix: str, depth: int, dim: int) -> dict:
    """stable-audio-tools DiT keys -> diffusers StableAudioDiTModel keys (what its conversion script does)."""
    p = prefix
    out = {
        "time_proj.weight": sd[f"{p}timestep_features.weight"][:, 0],
        "preprocess_conv.weight": sd[f"{p}preprocess_conv.weight"],
        "postprocess_conv.weight": sd[f"{p}postprocess_conv.weight"],
        "proj_in.weight": sd[f"{p}transformer.project_in.weight"],
        "proj_out.weight": sd[f"{p}transformer.project_out.weight"],
    }
    for ref, ours in (("to_timestep_embed", "timestep_proj"), ("to_global_embed", "global_proj"),
                      ("to_cond_embed", "cross_attention_proj")):  # fmt: skip
        for i in (0, 2):
            for kind in ("weight", "bias"):
                if f"{p}{ref}.{i}.{kind}" in sd:
                    out[f"{ours}.{i}.{kind}"] = sd[f"{p}{ref}.{i}.{kind}"]
    for i in range(depth):
        r, o = f"{p}transformer.layers.{i}.", f"transformer_blocks.{i}."
        for ref, ours in (("pre_norm", "norm1"), ("cross_attend_norm", "norm2"), ("ff_norm", "norm3")):
            out[f"{o}{ours}.weight"], out[f"{o}{ours}.bias"] = sd[f"{r}{ref}.gamma"], sd[f"{r}{ref}.beta"]
        q, k, v = sd[f"{r}self_attn.to_qkv.weight"].split(dim, dim=0)
        out.update({f"{o}attn1.to_q.weight": q, f"{o}attn1.to_k.weight": k, f"{o}attn1.to_v.weight": v})
        out[f"{o}attn1.to_out.0.weight"] = sd[f"{r}self_attn.to_out.weight"]
        k, v = sd[f"{r}cross_attn.to_kv.weight"].chunk(2, dim=0)
        out.update({f"{o}attn2.to_k.weight": k, f"{o}attn2.to_v.weight": v})
        out[f"{o}attn2.to_q.weight"] = sd[f"{r}cross_attn.to_q.weight"]
        out[f"{o}attn2.to_out.0.weight"] = sd[f"{r}cross_attn.to_out.weight"]
        out[f"{o}ff.net.0.proj.weight"] = sd[f"{r}ff.ff.0.proj.weight"]
        out[f"{o}ff.net.0.proj.bias"] = sd[f"{r}ff.ff.0.proj.bias"]
        out[f"{o}ff.net.2.weight"] = sd[f"{r}ff.ff.2.weight"]
        out[f"{o}ff.net.2.bias"] = sd[f"{r}ff.ff.2.bias"]
    return out


def run_diffusers(ref_dit, cfg: DiTConfig, x, t, cond, glob):
    from diffusers import StableAudioDiTModel
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    model = StableAudioDiTModel(
        sample_size=x.shape[-1], in_channels=cfg.io_channels, num_layers=cfg.depth,
        attention_head_dim=cfg.head_dim, num_attention_heads=cfg.num_heads,
        num_key_value_attention_heads=cfg.cond_token_dim // cfg.head_dim, out_channels=cfg.io_channels,
        cross_attention_dim=cfg.cond_token_dim, time_proj_dim=256,
        global_states_input_dim=cfg.global_cond_dim,
        cross_attention_input_dim=cfg.cond_token_dim,
    ).eval()  # fmt: skip
    sd = diffusers_state(ref_dit.state_dict(), "", cfg.depth, cfg.embed_dim)
    missing, unexpected = model.load_state_dict(sd, strict=True)
    assert not missing and not unexpected
    # The diffusers pipeline builds the rotary table for the L + 1 tokens with dim head_dim // 2, which equals
    # stable-audio-tools' max(head_dim // 2, 32) for the real 1.0 model; pass the latter here.
    rope = get_1d_rotary_pos_embed(
        cfg.rotary_dim, x.shape[-1] + 1, use_real=True, repeat_interleave_real=False
    )
    with torch.no_grad():
        return model(
            x, t, encoder_hidden_states=cond, global_hidden_states=glob[:, None], rotary_embedding=rope
        ).sample


@pytest.mark.parametrize("which", ["1.0", "partial-rope-gqa"])
def test_matches_diffusers(which, tmp_path_factory):
    pytest.importorskip("diffusers")
    if which == "1.0":
        from tests.reference.stable_audio import save_tiny_stable_audio

        _, wrapper = save_tiny_stable_audio(tmp_path_factory.mktemp("sa-diffusers"), "1.0")
        ref_dit, config = wrapper.model.model, model_config_of("1.0")
    else:
        from tests.reference.sat import import_sat

        import_sat()
        from stable_audio_tools.models.diffusion import DiTWrapper

        torch.manual_seed(8)
        ref_dit = DiTWrapper(diffusion_objective="v", **copy.deepcopy(VARIANTS[which])).eval().model
        with torch.no_grad():
            for p in ref_dit.parameters():
                p.add_(torch.randn(p.shape) * 0.05)
        config = {"model": {"diffusion": {"type": "dit", "config": VARIANTS[which]}}}
    perturb_buffers(ref_dit, seed=9)
    ours = load_ours(config, state_checkpoint(ref_dit), "")
    x, t, cond, _, glob = inputs(config)
    expected = run_diffusers(ref_dit, ours.config, x, t, cond, glob)
    assert rel(ours(to_mx(x), to_mx(t), to_mx(cond), to_mx(glob)), expected) <= TOL


# -- strict accounting and config checks ------------------------------------------------------------------


def test_missing_tensor_is_an_error(tiny):
    _, config, model, ours = tiny
    ckpt = state_checkpoint(model)
    del ckpt.tensors["model.model.transformer.layers.1.cross_attn.to_kv.weight"]
    with pytest.raises(UserError, match="cross_attn.to_kv.weight"):
        ours.sanitize(ckpt)


def test_extra_tensor_is_an_error(tiny):
    _, config, model, ours = tiny
    ckpt = state_checkpoint(model)
    ckpt.tensors["model.model.transformer.layers.0.self_attn.lambda_dc"] = mx.zeros((4,))
    ours.sanitize(ckpt)
    with pytest.raises(UserError, match="lambda_dc"):
        ckpt.finish(ignore=[r"pretransform\..*", r"conditioner\..*"])


def test_wrong_rotary_buffer_is_an_error(tiny):
    _, _, model, ours = tiny
    ckpt = state_checkpoint(model)
    key = "model.model.transformer.rotary_pos_emb.inv_freq"
    ckpt.tensors[key] = ckpt.tensors[key] * 2
    with pytest.raises(UserError, match="inv_freq"):
        ours.sanitize(ckpt)


def test_the_saved_rotary_buffer_is_what_we_compute(tiny):
    _, _, model, ours = tiny
    saved = model.state_dict()["model.model.transformer.rotary_pos_emb.inv_freq"].numpy()
    np.testing.assert_array_equal(saved, ours._inv_freq)


@pytest.mark.parametrize(
    "change",
    [
        {"global_cond_type": "adaLN"},
        {"attn_kwargs": {"qk_norm": "dyt"}},
        {"num_memory_tokens": 2},
        {"foo": 1},
    ],
)
def test_unsupported_options_are_refused(change):
    config = model_config_of("small")
    config["model"]["diffusion"]["config"].update(change)
    with pytest.raises(UserError):
        DiTConfig.from_dict(config)
