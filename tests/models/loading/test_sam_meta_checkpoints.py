"""Meta's original checkpoints load through samflow's registry and give Meta's outputs.

SAM: the model is segment-anything's own `Sam` (small ViT sizes so it runs in seconds), its
state dict saved exactly as Meta ships it; samflow maps it into `SamModel` and must reproduce
Meta's embeddings, low-res mask logits and IoU predictions. SAM 2 (`sam2` is not installed here):
the checkpoint is written in SAM 2's key layout (names from its source) with random weights,
and must load strictly, each tensor landing where transformers expects it.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from samflow.models.loading.check import check_model
from samflow.models.loading.checkpoint import sha256_file
from samflow.models.loading.meta_checkpoints import MetaCheckpointError, map_meta_state
from samflow.models.loading.registry import ModelLoadError, load_model
from tests.helpers.synthetic import smooth_image

segment_anything = pytest.importorskip("segment_anything")

IMG = 256  # Meta's img_size for the small test model (16 x 16 patches)


def meta_sam(seed: int = 0):
    """segment-anything's Sam with a small ViT (2 blocks, one global) and a seeded init;
    positional tables randomised too, so their mapping is tested."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    torch.manual_seed(seed)
    encoder = ImageEncoderViT(
        img_size=IMG, patch_size=16, embed_dim=64, depth=2, num_heads=2, mlp_ratio=4.0, out_chans=256,
        qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
        global_attn_indexes=(1,), window_size=4,
    )
    grid = IMG // 16
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid), input_image_size=(IMG, IMG),
                                     mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8), transformer_dim=256,
            iou_head_depth=3, iou_head_hidden_dim=256),
    )
    with torch.no_grad():
        for name, param in sam.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                param.normal_(0, 0.1)
    return sam.eval()


@pytest.fixture(scope="module")
def meta_sam_file(tmp_path_factory):
    sam = meta_sam()
    path = tmp_path_factory.mktemp("meta") / "sam_vit_test.pth"
    torch.save(sam.state_dict(), path)  # segment-anything's layout: a flat state dict
    return sam, path


def test_meta_sam_loads_and_matches_meta_outputs(meta_sam_file):
    from segment_anything import SamPredictor

    sam, path = meta_sam_file
    runner = load_model("sam", str(path), device="cpu")
    assert runner.checkpoint_sha256 == sha256_file(path)
    assert runner.checkpoint_mapping["layout"] == "meta-sam"
    assert runner.checkpoint_mapping["tensors_mapped"] == len(sam.state_dict())
    assert runner.image_size == IMG

    image = smooth_image(IMG, IMG, 5)  # already the model's size: both resize paths are identity
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    enc = runner.encode([image])
    torch.testing.assert_close(enc.embeddings, predictor.features, atol=1e-4, rtol=1e-4)

    points = np.array([[40.0, 60.0], [200.0, 30.0], [128.0, 128.0]])
    logits, iou = runner.decode(enc, [0], points=torch.as_tensor(points[None], dtype=torch.float32))
    coords = torch.as_tensor(predictor.transform.apply_coords(points, image.shape[:2]), dtype=torch.float32)
    _, meta_iou, meta_low = predictor.predict_torch(coords[:, None, :], torch.ones(3, 1), multimask_output=True,
                                                     return_logits=True)
    torch.testing.assert_close(logits[0], meta_low, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(iou[0], meta_iou, atol=1e-4, rtol=1e-4)
    ours = runner.postprocess_masks(logits[0], enc, 0) > 0
    meta_masks = predictor.model.postprocess_masks(meta_low, predictor.input_size, predictor.original_size) > 0
    agree = (ours == meta_masks).float().mean().item()
    assert agree > 0.999


def test_models_check_reports_the_mapping(meta_sam_file):
    _, path = meta_sam_file
    report = check_model(str(path))  # family inferred from the checkpoint's keys
    assert report["family"] == "sam"
    assert report["checkpoint_sha256"] == sha256_file(path)
    mapping = report["checkpoint_mapping"]
    assert mapping["layout"] == "meta-sam" and mapping["tensors_dropped"] == 0


def test_meta_checkpoint_with_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran pickled code",))

    path = tmp_path / "sam_vit_b_evil.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": Evil()}, path)
    with pytest.raises(ModelLoadError, match="refused"):
        load_model("sam", str(path), device="cpu")


def test_truncated_meta_checkpoint_names_the_missing_key(meta_sam_file, tmp_path):
    sam, _ = meta_sam_file
    state = sam.state_dict()
    del state["mask_decoder.iou_token.weight"]
    state["mask_decoder.iou_token_renamed.weight"] = torch.zeros(1, 256)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ModelLoadError):  # no longer recognisable as Meta's layout
        load_model("sam", str(path), device="cpu")
    state = sam.state_dict()
    del state["mask_decoder.output_upscaling.3.bias"]
    torch.save(state, path)
    with pytest.raises(ModelLoadError, match="upscale_conv2.bias"):
        load_model("sam", str(path), device="cpu")


# -- SAM 2 ---------------------------------------------------------------------------------------

def meta_sam2_state(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors under SAM 2's own names (sam2/modeling: SAM2Base with a Hiera trunk,
    FpnNeck, SAM-style prompt encoder and mask decoder), plus video-only modules."""
    out = {}
    for key, t in hf_state.items():
        k = key
        if k == "shared_image_embedding.positional_embedding":
            continue
        if k == "prompt_encoder.point_embed.weight":
            for i in range(t.shape[0]):
                out[f"sam_prompt_encoder.point_embeddings.{i}.weight"] = t[i : i + 1].clone()
            continue
        k = k.replace("vision_encoder.backbone.", "image_encoder.trunk.")
        k = k.replace("patch_embed.projection.", "patch_embed.proj.")
        k = k.replace(".layer_norm1.", ".norm1.").replace(".layer_norm2.", ".norm2.")
        k = k.replace(".layer_norm3.", ".norm3.").replace(".layer_norm4.", ".norm4.")
        k = k.replace("layer_norm_final_attn.", "norm_final_attn.")
        k = k.replace("mlp.proj_in.", "mlp.layers.0.").replace("mlp.proj_out.", "mlp.layers.1.")
        if k.startswith("vision_encoder.neck.convs."):
            k = k.replace("vision_encoder.neck.convs.", "image_encoder.neck.convs.")
            k = k.rsplit(".", 1)[0] + ".conv." + k.rsplit(".", 1)[1]
        k = k.replace("prompt_encoder.shared_embedding.positional_embedding",
                      "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix")
        for hf_name, meta_name in (("conv1", "0"), ("layer_norm1", "1"), ("conv2", "3"), ("layer_norm2", "4"),
                                   ("conv3", "6")):
            k = k.replace(f"mask_embed.{hf_name}.", f"mask_downscaling.{meta_name}.")
        # mask_embed norms were renamed by the generic layer_norm rule above
        k = k.replace("mask_embed.norm1.", "mask_downscaling.1.").replace("mask_embed.norm2.", "mask_downscaling.4.")
        k = k.replace(".o_proj.", ".out_proj.")
        k = k.replace("upscale_conv1.", "output_upscaling.0.").replace("upscale_layer_norm.", "output_upscaling.1.")
        k = k.replace("upscale_conv2.", "output_upscaling.3.")
        for head in ("iou_prediction_head", "pred_obj_score_head", "output_hypernetworks_mlps."):
            if head in k:
                k = k.replace(".layers.0.", ".layers.1.").replace(".proj_in.", ".layers.0.")
                k = k.replace(".proj_out.", ".layers.2.")
        k = k.replace("prompt_encoder.", "sam_prompt_encoder.").replace("mask_decoder.", "sam_mask_decoder.")
        k = k.replace("no_memory_embedding", "no_mem_embed")
        out[k] = t.clone()
    # video-only parts of a real SAM 2.1 checkpoint: present in the file, unused by images
    out["maskmem_tpos_enc"] = torch.randn(7, 1, 1, 64)
    out["memory_attention.layers.0.self_attn.q_proj.weight"] = torch.randn(256, 256)
    out["obj_ptr_proj.layers.0.weight"] = torch.randn(256, 256)
    return out


@pytest.mark.slow
def test_meta_sam2_checkpoint_loads_into_sam2model(tmp_path):
    from transformers import Sam2Config, Sam2Model

    torch.manual_seed(0)
    reference = Sam2Model(Sam2Config()).eval()  # transformers' defaults are SAM 2.1 Hiera-T
    with torch.no_grad():  # one table in Meta's model (pe_layer), two copies in transformers'
        reference.shared_image_embedding.positional_embedding.copy_(
            reference.prompt_encoder.shared_embedding.positional_embedding)
    meta_state = meta_sam2_state(reference.state_dict())
    assert "image_encoder.trunk.blocks.1.proj.weight" in meta_state  # the stage-change projection
    assert "sam_mask_decoder.pred_obj_score_head.layers.2.bias" in meta_state
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": meta_state}, path)

    runner = load_model("sam2", str(path), device="cpu")
    mapping = runner.checkpoint_mapping
    assert mapping["layout"] == "meta-sam2" and mapping["variant"] == "hiera_tiny"
    assert mapping["dropped_modules"] == ["maskmem_tpos_enc", "memory_attention", "obj_ptr_proj"]
    loaded = runner.model.state_dict()
    for key, tensor in reference.state_dict().items():
        torch.testing.assert_close(loaded[key], tensor, msg=key)

    image = smooth_image(96, 128, 1)
    enc = runner.encode([image])
    logits, iou = runner.decode(enc, [0], points=torch.tensor([[[30.0, 40.0]]]))
    assert torch.isfinite(logits).all() and iou.shape[-1] == 3


def test_unknown_hiera_variant_is_a_clear_error():
    state = {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(80, 3, 7, 7),
             "sam_mask_decoder.iou_token.weight": torch.zeros(1, 256),
             "image_encoder.trunk.blocks.0.norm2.weight": torch.zeros(80)}
    with pytest.raises(MetaCheckpointError, match="not a published Hiera variant"):
        map_meta_state(state, "sam2")
