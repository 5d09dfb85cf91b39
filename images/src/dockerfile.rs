//! `dockerfile:` images: built by the daemon's builder from a tar of the context (honouring
//! `.dockerignore`), keyed by the Dockerfile and the context files' digests.

use tokio_util::sync::CancellationToken;

use crate::build::Builder;
use crate::{BuildContext, BuildError, BuiltImage, LogFn};

pub(crate) async fn build(
    _builder: &Builder,
    _ctx: &BuildContext<'_>,
    _name: &str,
    _dockerfile: &str,
    _context: &str,
    _log: LogFn<'_>,
    _cancel: &CancellationToken,
) -> Result<BuiltImage, BuildError> {
    todo!("dockerfile")
}
