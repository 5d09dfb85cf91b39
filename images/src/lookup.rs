//! Finding a built image without building it, for `engine plan`: the image's key is computed
//! as a build computes it (stage keys from base image identities, copy sources and instructions;
//! a Dockerfile image's key from its Dockerfile, base image identities and the files it copies),
//! and the image carrying that key is looked for. No container is created, nothing is built or
//! tagged.

use crate::key::StageKey;
use crate::Builder;
use crate::{BuildContext, BuildError};

impl Builder {
    /// The ID of the image `name` as `def` defines it now, if one was built (`None`: a build
    /// would build it). A base image that is not present locally is pulled, as a build would.
    pub async fn lookup(&self, ctx: &BuildContext<'_>, name: &str, def: &dsl::ImageDef) -> Result<Option<docker::ImageId>, BuildError> {
        let (key, dockerfile) = self.key_of(ctx, name, def).await?;
        if dockerfile {
            crate::dockerfile::find_by_key(self, &key).await
        } else {
            crate::stages::find(self, name, &key, true).await
        }
    }

    /// The key of the image `name` as `def` defines it now (its final stage's key, or a
    /// Dockerfile image's key), built or not: what the steps using it are keyed by. A base
    /// image that is not present locally is pulled, as a build would.
    pub async fn image_key(&self, ctx: &BuildContext<'_>, name: &str, def: &dsl::ImageDef) -> Result<StageKey, BuildError> {
        Ok(self.key_of(ctx, name, def).await?.0)
    }

    /// The key, and whether the image is a Dockerfile image.
    async fn key_of(&self, ctx: &BuildContext<'_>, name: &str, def: &dsl::ImageDef) -> Result<(StageKey, bool), BuildError> {
        let quiet = |_: &str, _: &str, _: &str| {};
        match def {
            dsl::ImageDef::Stages(stages) => {
                let invalid = |message: &str| BuildError::Invalid { image: name.to_string(), message: message.to_string() };
                let last = stages.len().checked_sub(1).ok_or_else(|| invalid("has no stages"))?;
                let plans = crate::stages::plan(self, ctx, name, stages, last, &quiet).await?;
                let key = plans[last].as_ref().map(|p| p.key).ok_or_else(|| invalid("final stage was not planned"))?;
                Ok((key, false))
            }
            dsl::ImageDef::Dockerfile { dockerfile, context, network, args, target } => {
                let spec = crate::dockerfile::Spec { dockerfile, context, network: *network, args, target: target.as_deref() };
                let prepared = crate::dockerfile::prepare(self, ctx, name, spec, &quiet).await?;
                Ok((prepared.key(), true))
            }
        }
    }
}
