//! `.dockerignore`, read and matched exactly as the docker CLI does (moby's `ignorefile.ReadAll`
//! and `patternmatcher`), so that the context the engine sends is the one `docker build` sends:
//!
//! - lines split at `\n` (a trailing `\r` dropped), a UTF-8 BOM stripped from the first line;
//! - a line whose *first* character is `#` is a comment (an indented `#` is a pattern, as in
//!   moby); every other line is trimmed, and an empty one skipped;
//! - `!` makes an exception; patterns are cleaned lexically (`a//b/../c` is `a/c`), a leading `/`
//!   dropped;
//! - `*` and `?` never cross `/`; `**` matches any number of folders, also when it is not next to
//!   a `/` (a leading `**` is a suffix match: `**.key` excludes `a/b/secret.key`); `[...]` is a
//!   class, `\` escapes;
//! - the last pattern that matches a path, or one of its parent folders, decides.

use regex_automata::meta::Regex;

/// The longest line of `.dockerignore`, as Go's `bufio.Scanner` reads it (64 KiB).
const MAX_LINE: usize = 64 * 1024;

/// Why `.dockerignore` cannot be used (the docker CLI refuses the same files).
#[derive(Debug, thiserror::Error)]
pub(crate) enum IgnoreError {
    /// A line longer than 64 KiB.
    #[error("`.dockerignore` line {0} is longer than 64 KiB")]
    LineTooLong(usize),
    /// A lone `!`.
    #[error("`.dockerignore`: illegal exclusion pattern `!`")]
    LoneBang,
    /// A pattern that is not a valid pattern.
    #[error("`.dockerignore`: bad pattern `{pattern}`")]
    BadPattern {
        /// The pattern, cleaned.
        pattern: String,
        /// Why the regular expression it becomes is refused.
        #[source]
        source: Box<regex_automata::meta::BuildError>,
    },
    /// A pattern ending in a lone `\`.
    #[error("`.dockerignore`: bad pattern `{0}`: it ends in `\\`")]
    TrailingBackslash(String),
}

/// The patterns of a `.dockerignore` file, in order (moby's `ignorefile.ReadAll`).
pub(crate) fn read_all(bytes: &[u8]) -> Result<Vec<String>, IgnoreError> {
    let mut out = Vec::new();
    let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    // `bufio.ScanLines`: no empty token after a final newline.
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        lines.pop();
    }
    for (i, line) in lines.into_iter().enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > MAX_LINE {
            return Err(IgnoreError::LineTooLong(i + 1));
        }
        let line = if i == 0 { line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line) } else { line };
        // Comments are recognised before trimming: `  # x` is the pattern `# x`.
        if line.starts_with(b"#") {
            continue;
        }
        let text = String::from_utf8_lossy(line);
        let mut pattern = text.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut pattern = pattern.to_string();
        if !pattern.is_empty() {
            pattern = clean(&pattern);
            if pattern.len() > 1 && pattern.starts_with('/') {
                pattern.remove(0);
            }
        }
        out.push(if invert { format!("!{pattern}") } else { pattern });
    }
    Ok(out)
}

/// Go's `filepath.Clean`: the shortest equivalent path, lexically.
pub(crate) fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

enum Kind {
    Exact,
    Prefix,
    Suffix,
    Regex(Regex),
}

struct Pattern {
    /// Cleaned, without the `!`.
    text: String,
    exclusion: bool,
    kind: Kind,
}

impl Pattern {
    fn matches(&self, path: &[u8]) -> bool {
        let text = self.text.as_bytes();
        match &self.kind {
            Kind::Exact => path == text,
            Kind::Prefix => path.starts_with(&text[..text.len() - 2]),
            Kind::Suffix => {
                let suffix = &text[2..];
                path.ends_with(suffix) || (suffix.first() == Some(&b'/') && path == &suffix[1..])
            }
            Kind::Regex(re) => re.is_match(path),
        }
    }
}

/// Compiled patterns (moby's `patternmatcher.PatternMatcher`).
#[derive(Default)]
pub(crate) struct Matcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

/// What a folder's patterns matched, handed to its children (moby's `MatchInfo`).
#[derive(Clone, Default)]
pub(crate) struct MatchInfo(Vec<bool>);

impl Matcher {
    /// Compile `patterns` as `patternmatcher.New` does.
    pub(crate) fn new(patterns: &[String]) -> Result<Matcher, IgnoreError> {
        let mut out = Matcher::default();
        for p in patterns {
            let p = p.trim();
            if p.is_empty() {
                continue;
            }
            let mut p = clean(p);
            let exclusion = p.starts_with('!');
            if exclusion {
                if p.len() == 1 {
                    return Err(IgnoreError::LoneBang);
                }
                p.remove(0);
                out.exclusions = true;
            }
            let kind = compile(&p)?;
            out.patterns.push(Pattern { text: p, exclusion, kind });
        }
        Ok(out)
    }

    /// Whether any pattern is an exception (`!`).
    pub(crate) fn has_exclusions(&self) -> bool {
        self.exclusions
    }

    /// Whether an exception pattern could match below the folder `dir` (moby's check before
    /// skipping an excluded folder: the exception's text starts with `dir/`).
    pub(crate) fn exception_below(&self, dir: &[u8]) -> bool {
        self.patterns.iter().filter(|p| p.exclusion).any(|p| {
            let mut text = p.text.as_bytes().to_vec();
            text.push(b'/');
            text.starts_with(dir) && text.get(dir.len()) == Some(&b'/')
        })
    }

    /// moby's `MatchesOrParentMatches`: whether `file` (`/`-separated, relative) is excluded.
    pub(crate) fn matches_or_parent_matches(&self, file: &[u8]) -> bool {
        self.matches_using_parent(file, None).0
    }

    /// moby's `MatchesUsingParentResults`: whether `file` is excluded, given what its parent
    /// folder matched (`None` for a top-level entry: parents are then checked one by one).
    pub(crate) fn matches_using_parent(&self, file: &[u8], parent: Option<&MatchInfo>) -> (bool, MatchInfo) {
        let mut matched = false;
        let mut info = MatchInfo(vec![false; self.patterns.len()]);
        for (i, pattern) in self.patterns.iter().enumerate() {
            let mut m = parent.is_some_and(|p| p.0.get(i).copied().unwrap_or(false));
            if !m {
                if pattern.exclusion != matched {
                    continue;
                }
                m = pattern.matches(file);
                if !m && parent.is_none() {
                    if let Some(last) = file.iter().rposition(|b| *b == b'/') {
                        let parent_path = &file[..last];
                        m = parent_path
                            .iter()
                            .enumerate()
                            .filter(|(_, b)| **b == b'/')
                            .map(|(j, _)| &parent_path[..j])
                            .chain(std::iter::once(parent_path))
                            .any(|dir| pattern.matches(dir));
                    }
                }
            }
            info.0[i] = m;
            if m {
                matched = !pattern.exclusion;
            }
        }
        (matched, info)
    }
}

/// moby's `Pattern.compile`: the pattern as a regular expression, or a plain comparison when it
/// has no special character (`**` at an end is a prefix or suffix match).
fn compile(pattern: &str) -> Result<Kind, IgnoreError> {
    #[derive(PartialEq)]
    enum T {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let mut re = String::from("^");
    let mut kind = T::Exact;
    let chars: Vec<char> = pattern.chars().collect();
    let mut pos = 0;
    let mut i = 0;
    while pos < chars.len() {
        let ch = chars[pos];
        pos += 1;
        match ch {
            '*' if chars.get(pos) == Some(&'*') => {
                pos += 1;
                if chars.get(pos) == Some(&'/') {
                    pos += 1;
                }
                if pos == chars.len() {
                    if kind == T::Exact {
                        kind = T::Prefix;
                    } else {
                        re.push_str(".*");
                        kind = T::Regex;
                    }
                } else {
                    re.push_str("(.*/)?");
                    kind = T::Regex;
                }
                if i == 0 {
                    kind = T::Suffix;
                }
            }
            '*' => {
                re.push_str("[^/]*");
                kind = T::Regex;
            }
            '?' => {
                re.push_str("[^/]");
                kind = T::Regex;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                re.push('\\');
                re.push(ch);
            }
            '\\' => match chars.get(pos) {
                Some(next) => {
                    re.push('\\');
                    re.push(*next);
                    pos += 1;
                    kind = T::Regex;
                }
                None => return Err(IgnoreError::TrailingBackslash(pattern.to_string())),
            },
            '[' | ']' => {
                re.push(ch);
                kind = T::Regex;
            }
            c => re.push(c),
        }
        i += 1;
    }
    Ok(match kind {
        T::Exact => Kind::Exact,
        T::Prefix => Kind::Prefix,
        T::Suffix => Kind::Suffix,
        T::Regex => {
            re.push('$');
            let built = Regex::new(&re).map_err(|e| IgnoreError::BadPattern { pattern: pattern.to_string(), source: Box::new(e) })?;
            Kind::Regex(built)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn excluded(dockerignore: &str, path: &str) -> bool {
        Matcher::new(&read_all(dockerignore.as_bytes()).unwrap()).unwrap().matches_or_parent_matches(path.as_bytes())
    }

    #[test]
    fn lines_bom_comments_and_cleaning() {
        let text = "\u{FEFF}secret.key\n  # indented is a pattern\n#comment\r\n  /build/  \n! keep.log\n\n./a//b/../c\n";
        assert_eq!(read_all(text.as_bytes()).unwrap(), ["secret.key", "# indented is a pattern", "build", "!keep.log", "a/c"]);
        assert_eq!(read_all(b"x").unwrap(), ["x"]);
        assert!(matches!(Matcher::new(&read_all(b"!\n").unwrap()), Err(IgnoreError::LoneBang)));
        assert!(Matcher::new(&["a\\".to_string()]).is_err());
        assert!(Matcher::new(&["[a".to_string()]).is_err());
        assert_eq!(clean("/"), "/");
        assert_eq!(clean("../a/./b/"), "../a/b");
        assert_eq!(clean("/../a"), "/a");
        assert_eq!(clean(""), ".");
    }

    #[test]
    fn moby_matching() {
        assert!(excluded("\u{FEFF}secret.key", "secret.key"), "the BOM is stripped");
        assert!(excluded("*.log", "a.log"));
        assert!(!excluded("*.log", "sub/a.log"), "`*` does not cross folders");
        assert!(excluded("**/*.log", "sub/x/a.log"));
        assert!(excluded("**/*.log", "a.log"));
        assert!(excluded("**.key", "a/b/secret.key"), "a leading `**` is a suffix");
        assert!(excluded("**.key", "xkey.key"));
        assert!(excluded("a**", "abc/d"), "`**` at the end is a prefix");
        assert!(excluded("a/**/b", "a/x/y/b"));
        assert!(excluded("a/**/b", "a/b"));
        assert!(excluded("build", "build/x/y"), "a parent folder matching excludes below it");
        assert!(excluded("*\n!keep\n", "drop") && !excluded("*\n!keep\n", "keep"));
        assert!(excluded("docs/?.md", "docs/a.md") && !excluded("docs/?.md", "docs/ab.md"));
        assert!(excluded("[a-c].txt", "b.txt") && !excluded("[a-c].txt", "d.txt"));
        assert!(excluded("\\*x", "*x") && !excluded("\\*x", "ax"));
        assert!(excluded("  # not a comment", "# not a comment"));
        assert!(!excluded("# a comment", "# a comment"));
        assert!(excluded("a.(b)+", "a.(b)+"), "regex characters are literal");
    }

    #[test]
    fn exceptions_below_a_folder() {
        let m = Matcher::new(&read_all(b"dir\n!dir/keep\n!*.go\n").unwrap()).unwrap();
        assert!(m.has_exclusions());
        assert!(m.exception_below(b"dir"));
        assert!(!m.exception_below(b"other"));
        assert!(!m.exception_below(b"di"));
    }
}
