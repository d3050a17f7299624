"""The results schema shared by scores, summaries, reports and comparisons."""

from __future__ import annotations

# Per-sample metrics (p_ = vs the 5 history images, a_ = vs the reference).
PER_SAMPLE_METRICS: tuple[str, ...] = (
    "p_cs", "p_cis", "p_dis", "p_lpips", "p_msssim", "a_cs", "a_cis", "a_dis",
)
# Set-level metrics.
SET_METRICS: tuple[str, ...] = ("fid", "overall")
METRICS: tuple[str, ...] = PER_SAMPLE_METRICS + SET_METRICS

# True where larger is better.
HIGHER_IS_BETTER: dict[str, bool] = {m: m not in ("p_lpips", "fid") for m in METRICS}

TINY_PROFILE_NOTICE = "tiny profile: not comparable with the paper"
