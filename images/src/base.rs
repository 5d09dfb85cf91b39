//! Base images: found locally, or pulled from their registry; root folders imported as images.

use crate::build::Builder;
use crate::{BuildError, LogFn};

pub(crate) async fn ensure(builder: &Builder, reference: &str, _log: LogFn<'_>) -> Result<String, BuildError> {
    match builder.docker.inspect_image(reference).await {
        Ok(image) => image.id.ok_or_else(|| BuildError::Environment(format!("image `{reference}` has no ID"))),
        Err(e) => Err(BuildError::Environment(format!("base image `{reference}` is not present locally: {e}"))),
    }
}

pub(crate) async fn import_rootfs(_builder: &Builder, _dir: &std::path::Path, _reference: &str) -> Result<String, BuildError> {
    todo!("import")
}
