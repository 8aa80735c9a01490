"""The finished model of each family, one file each, built from `course_lib.nn`."""

from course_lib.models.any_resolution import (
    FlexiPatchEmbedding,
    FlexiViT,
    PackedBatch,
    RandomResolution,
    pack_images,
    packed_forward,
)
from course_lib.models.clip import (
    CLIP,
    CLIPConfig,
    clip_loss,
    recall_at_k,
    zero_shot_classify,
)
from course_lib.models.cross_scale import (
    CrossFormer,
    CrossFormerConfig,
    CrossViT,
    CrossViTConfig,
    MaxViT,
    MaxViTConfig,
)
from course_lib.models.dit import DiT, DiTConfig
from course_lib.models.forecast_baselines import (
    LinearForecaster,
    arima_forecasts,
    ets_forecasts,
    seasonal_naive,
)
from course_lib.models.forecasting import (
    DecoderForecaster,
    DecoderForecasterConfig,
    PatchTST,
    PatchTSTConfig,
)
from course_lib.models.fusion import FusionConfig, FusionModel
from course_lib.models.gpt import GPT, GPTConfig, KVCache
from course_lib.models.hierarchical import (
    CvT,
    CvTConfig,
    MViT,
    MViTConfig,
    PiT,
    PiTConfig,
    SegFormerConfig,
    SegFormerEncoder,
    T2TConfig,
    T2TViT,
)
from course_lib.models.hybrid import Hybrid, HybridConfig
from course_lib.models.image_tokens import MaskedTokenConfig, MaskedTokenModel, PatchTokenizer
from course_lib.models.judge import ConvJudge, conditional_accuracy
from course_lib.models.mae import ConvMAE, ConvMAEConfig, MAEConfig, MaskedAutoencoder
from course_lib.models.mamba import Mamba, MambaConfig
from course_lib.models.masked_diffusion import MaskedDiffusion, MaskedDiffusionConfig
from course_lib.models.mblm import MBLM, MBLMConfig
from course_lib.models.mmdit import MMDiT, MMDiTConfig
from course_lib.models.multimae import MultiMAE, MultiMAEConfig
from course_lib.models.multiscale_forecasting import (
    AdaptivePathways,
    CoarseToFine,
    CoarseToFineConfig,
    MultiResolution,
    MultiScaleConfig,
    MultiScaledEmbedding,
    SAMformer,
)
from course_lib.models.multiscale_text import MultiScaleTransformer, MultiScaleTransformerConfig
from course_lib.models.next_scale import NextScaleConfig, NextScaleTransformer
from course_lib.models.operator import FieldTransformer, FieldTransformerConfig
from course_lib.models.operator_baselines import (
    LinearOperator,
    NearestNeighbour,
    interpolate_to_grid,
    periodic_interpolate,
    relative_l2,
)
from course_lib.models.restoration import (
    ChannelAttention,
    HierarchicalWindows,
    LeWinBlock,
    RestorationConfig,
    RestorationNet,
    RestormerBlock,
    denoiser,
    super_resolver,
)
from course_lib.models.segmentation import (
    ColourClassifier,
    EoMT,
    EoMTConfig,
    SegFormer,
    SegFormerSegmenterConfig,
    SmallUNet,
)
from course_lib.models.seq2seq import Seq2SeqTransformer, Seq2SeqTransformerConfig
from course_lib.models.sequence import SequenceTransformer, SequenceTransformerConfig
from course_lib.models.swin import Swin, SwinConfig
from course_lib.models.transfusion import Transfusion, TransfusionConfig
from course_lib.models.unified import UnifiedConfig, UnifiedTransformer, VisionLanguageBridge
from course_lib.models.vit import ViT, ViTConfig
from course_lib.models.vqvae import VQVAE, VQVAEConfig

__all__ = [
    "AdaptivePathways", "ChannelAttention", "CoarseToFine", "CoarseToFineConfig", "DecoderForecaster", "DecoderForecasterConfig",
    "MultiResolution", "MultiScaleConfig", "MultiScaledEmbedding", "PatchTST", "PatchTSTConfig", "SAMformer",
    "CLIP", "CLIPConfig", "clip_loss", "recall_at_k", "zero_shot_classify", "FusionConfig", "FusionModel", "UnifiedConfig",
    "UnifiedTransformer", "VisionLanguageBridge", "VQVAE", "VQVAEConfig", "DiT", "DiTConfig", "MMDiT", "MMDiTConfig", "Transfusion", "TransfusionConfig", "MaskedDiffusion", "MaskedDiffusionConfig",
    "NextScaleConfig", "NextScaleTransformer", "FieldTransformer", "FieldTransformerConfig", "LinearOperator",
    "NearestNeighbour", "interpolate_to_grid", "periodic_interpolate", "relative_l2", "ConvJudge",
    "conditional_accuracy",
    "ColourClassifier", "ConvMAE", "ConvMAEConfig", "CrossFormer", "CrossFormerConfig", "CrossViT", "CrossViTConfig", "CvT", "CvTConfig", "EoMT", "EoMTConfig", "FlexiPatchEmbedding",
    "HierarchicalWindows", "LeWinBlock",     "FlexiViT", "GPT", "GPTConfig", "Hybrid", "HybridConfig", "KVCache", "LinearForecaster", "MAEConfig", "Mamba", "MambaConfig", "MaskedAutoencoder", "MaskedTokenConfig", "MaskedTokenModel", "MaxViT",
    "MaxViTConfig", "MBLM", "MBLMConfig", "MultiMAE", "MultiMAEConfig", "MultiScaleTransformer", "MultiScaleTransformerConfig", "MViT",
    "MViTConfig", "pack_images", "packed_forward", "PackedBatch", "PatchTokenizer", "PiT", "PiTConfig", "RandomResolution", "RestorationConfig", "RestorationNet", "RestormerBlock",
    "SegFormer", "SegFormerConfig", "SegFormerEncoder", "SegFormerSegmenterConfig", "Seq2SeqTransformer", "Seq2SeqTransformerConfig",
    "SequenceTransformer", "SequenceTransformerConfig", "SmallUNet", "Swin", "SwinConfig", "T2TConfig", "T2TViT", "ViT",
    "ViTConfig", "arima_forecasts", "denoiser", "ets_forecasts", "seasonal_naive", "super_resolver",
]
