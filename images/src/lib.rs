//! Multi-stage image builds with stage-level cache keys. Not built yet (issue: images).
