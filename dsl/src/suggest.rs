//! "Did you mean ...?" suggestions for misspelt keys, step names and values.
//!
//! Owns only the string similarity choice; callers decide what the candidates are.

/// The candidate closest to `word`, if it is close enough to be a plausible typo.
pub(crate) fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&word.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// `" (did you mean `x`?)"` or nothing, for appending to a message.
pub(crate) fn hint<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    did_you_mean(word, candidates).map(|c| format!("; did you mean `{c}`?")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_words_only() {
        assert_eq!(did_you_mean("ouputs", ["inputs", "outputs", "needs"]), Some("outputs"));
        assert_eq!(did_you_mean("complie", ["compile", "test"]), Some("compile"));
        assert_eq!(did_you_mean("zzz", ["compile", "test"]), None);
    }
}
