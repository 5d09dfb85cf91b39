//! Listing and pruning what the engine built.

use crate::build::{Builder, ImageInfo};
use crate::BuildError;

pub(crate) async fn list(_builder: &Builder) -> Result<Vec<ImageInfo>, BuildError> {
    todo!("list")
}

pub(crate) async fn prune(_builder: &Builder, _keep: &[String]) -> Result<Vec<String>, BuildError> {
    todo!("prune")
}
