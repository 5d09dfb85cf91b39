//! Shared helpers for the integration tests. Every test here needs a Docker daemon and the test
//! images (`scripts/test-images.sh`); a missing daemon is a loud failure, never a skip.
