//! Hostile cases: secrets.

#[allow(unused_imports)]
use crate::common::{hostile::*, *};
