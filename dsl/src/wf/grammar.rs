//! The pest grammar of `.wf` files (`wf.pest`) and its generated `Rule`s. Small named rules
//! (`lbrace`, `kw_step`, ...) exist so that syntax errors can name what was expected in words
//! (see [`super::syntax`]).

#[derive(pest_derive::Parser)]
#[grammar = "wf/wf.pest"]
pub(super) struct WfParser;
