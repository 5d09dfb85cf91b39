//! Hostile cases: files.

#[allow(unused_imports)]
use crate::common::{hostile::*, *};
