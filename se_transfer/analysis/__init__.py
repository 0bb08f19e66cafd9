"""Looking inside a trained SE network: excitation statistics and plots (the paper's section 7) and the SE-removal
ablation at inference. ``tools/analyze_excitation.py`` and ``tools/ablate_se.py`` run them on a config's
evaluation split; the pieces work on any model with ``SEModule`` blocks."""

from .excitation import ExcitationRecorder, ExcitationStats, SEBlock, pick_blocks, se_blocks, se_switched_off

__all__ = ["ExcitationRecorder", "ExcitationStats", "SEBlock", "pick_blocks", "se_blocks", "se_switched_off"]
