//! Stage images: each stage built from its base by running its instructions in containers and
//! committing, keyed so that an unchanged stage is found instead of rebuilt.

use tokio_util::sync::CancellationToken;

use crate::build::Builder;
use crate::{BuildContext, BuildError, BuiltImage, LogFn};

pub(crate) async fn build(
    _builder: &Builder,
    _ctx: &BuildContext<'_>,
    _name: &str,
    _stages: &[dsl::Stage],
    _log: LogFn<'_>,
    _cancel: &CancellationToken,
) -> Result<BuiltImage, BuildError> {
    todo!("stages")
}
