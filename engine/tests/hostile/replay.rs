//! Hostile cases: replay.

#[allow(unused_imports)]
use crate::common::{hostile::*, *};
