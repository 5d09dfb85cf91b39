//! `engine replay`.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::run::StartError;

pub struct ReplayConfig {
    pub dir: PathBuf,
    pub id: String,
    pub steps: Vec<String>,
    pub jobs: Option<usize>,
    pub cache_dir: PathBuf,
}

pub async fn replay(cfg: ReplayConfig, cancel: CancellationToken) -> Result<i32, StartError> {
    let _ = (cfg, cancel);
    todo!()
}
