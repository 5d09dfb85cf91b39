//! Hostile cases: resources.

#[allow(unused_imports)]
use crate::common::{hostile::*, *};
