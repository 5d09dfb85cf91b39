//! Hostile cases: images.

#[allow(unused_imports)]
use crate::common::{hostile::*, *};
