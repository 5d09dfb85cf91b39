//! Hostile cases: dsl_bombs.

#[allow(unused_imports)]
use crate::common::{hostile::*, *};
