//! Session tags and the `/list` filter grammar (PROTOCOL.md §1.2, §1.6).
//!
//! A tag is 1 to 64 bytes of `[A-Za-z0-9_.:-]`. A filter is a comma-separated list of
//! terms: `tag` keeps sessions that have the tag, `!tag` drops sessions that have it;
//! all terms must hold; an empty filter keeps every session.
//!
//! ```
//! use glare_proto::filter::{Filter, Tag};
//!
//! let filter: Filter = "chat,!eu".parse()?;
//! let tags = [Tag::new("chat")?, Tag::new("us")?];
//! assert!(filter.matches(&tags));
//! assert!(!filter.matches(&[Tag::new("chat")?, Tag::new("eu")?]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, de};

/// Longest tag, in bytes.
pub const MAX_TAG_LEN: usize = 64;

/// A session tag: 1 to 64 bytes of `[A-Za-z0-9_.:-]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Tag(String);

impl Tag {
    /// Checks `tag` against the grammar.
    pub fn new(tag: impl Into<String>) -> Result<Self, TagError> {
        let tag = tag.into();
        validate_tag(&tag)?;
        Ok(Self(tag))
    }

    /// The tag text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Tag {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Tag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(de::Error::custom)
    }
}

/// Why a tag is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TagError {
    /// The tag is empty.
    #[error("a tag must not be empty")]
    Empty,
    /// The tag is longer than [`MAX_TAG_LEN`] bytes.
    #[error("tag is {0} bytes long, more than 64")]
    TooLong(usize),
    /// The tag holds a character outside `[A-Za-z0-9_.:-]`.
    #[error("tag {tag:?} holds {ch:?}, which is not one of [A-Za-z0-9_.:-]")]
    BadChar {
        /// The tag (cut to 64 bytes).
        tag: String,
        /// The first bad character.
        ch: char,
    },
}

fn validate_tag(tag: &str) -> Result<(), TagError> {
    if tag.is_empty() {
        return Err(TagError::Empty);
    }
    if let Some(ch) = tag
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        return Err(TagError::BadChar {
            tag: tag.chars().take(MAX_TAG_LEN).collect(),
            ch,
        });
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(TagError::TooLong(tag.len()));
    }
    Ok(())
}

/// One filter term: a tag that must be present (`tag`) or absent (`!tag`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Term {
    /// The tag.
    pub tag: Tag,
    /// `true` for `!tag`.
    pub negated: bool,
}

/// A parsed `/list` filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    terms: Vec<Term>,
}

/// Why a filter did not parse; points at the bad term.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// A term is empty (`a,,b`, a trailing comma) or a lone `!`.
    #[error("filter term {index} (byte {offset}) is empty")]
    EmptyTerm {
        /// Zero-based term index.
        index: usize,
        /// Byte offset of the term in the filter.
        offset: usize,
    },
    /// A term is not a valid tag.
    #[error("filter term {index} (byte {offset}) is not a valid tag: {error}")]
    BadTag {
        /// Zero-based term index.
        index: usize,
        /// Byte offset of the term in the filter.
        offset: usize,
        /// What is wrong with the tag.
        error: TagError,
    },
}

impl Filter {
    /// Parses a filter; the empty string is the filter that keeps everything.
    pub fn parse(filter: &str) -> Result<Self, FilterError> {
        let mut terms = Vec::new();
        if filter.is_empty() {
            return Ok(Self { terms });
        }
        let mut offset = 0;
        for (index, raw) in filter.split(',').enumerate() {
            let (negated, text) = match raw.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, raw),
            };
            if text.is_empty() {
                return Err(FilterError::EmptyTerm { index, offset });
            }
            let tag = Tag::new(text).map_err(|error| FilterError::BadTag {
                index,
                offset,
                error,
            })?;
            let term = Term { tag, negated };
            // A repeated term means the same as one.
            if !terms.contains(&term) {
                terms.push(term);
            }
            offset += raw.len() + 1;
        }
        Ok(Self { terms })
    }

    /// The distinct terms, in the order first given.
    pub fn terms(&self) -> &[Term] {
        &self.terms
    }

    /// Whether a session with these tags passes every term.
    pub fn matches(&self, tags: &[Tag]) -> bool {
        self.terms
            .iter()
            .all(|term| tags.contains(&term.tag) != term.negated)
    }
}

impl FromStr for Filter {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, term) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if term.negated {
                f.write_str("!")?;
            }
            f.write_str(term.tag.as_str())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<Tag> {
        list.iter().map(|t| Tag::new(*t).unwrap()).collect()
    }

    #[test]
    fn tag_grammar() {
        for ok in ["a", "chat", "eu-west.1:x_y", &"z".repeat(64), "0"] {
            assert!(Tag::new(ok).is_ok(), "{ok}");
        }
        assert_eq!(Tag::new(""), Err(TagError::Empty));
        assert_eq!(Tag::new("a".repeat(65)), Err(TagError::TooLong(65)));
        assert!(matches!(
            Tag::new("a b"),
            Err(TagError::BadChar { ch: ' ', .. })
        ));
        assert!(matches!(
            Tag::new("a,b"),
            Err(TagError::BadChar { ch: ',', .. })
        ));
        assert!(matches!(
            Tag::new("!a"),
            Err(TagError::BadChar { ch: '!', .. })
        ));
        assert!(matches!(
            Tag::new("é"),
            Err(TagError::BadChar { ch: 'é', .. })
        ));
        // A huge bad tag is reported with its text cut short.
        let Err(TagError::BadChar { tag, .. }) = Tag::new(format!("{}\n", "x".repeat(10_000)))
        else {
            panic!("expected BadChar");
        };
        assert_eq!(tag.len(), 64);
    }

    #[test]
    fn tag_deserialize_checks_grammar() {
        assert_eq!(
            serde_json::from_str::<Tag>("\"ok\"").unwrap().as_str(),
            "ok"
        );
        let err = serde_json::from_str::<Tag>("\"no way\"").unwrap_err();
        assert!(err.to_string().contains("not one of"), "{err}");
        assert!(serde_json::from_str::<Tag>("5").is_err());
    }

    #[test]
    fn filter_semantics() {
        let empty = Filter::parse("").unwrap();
        assert!(empty.matches(&[]));
        assert!(empty.matches(&tags(&["x"])));

        let f = Filter::parse("tag1,!tag2").unwrap();
        assert!(f.matches(&tags(&["tag1"])));
        assert!(f.matches(&tags(&["tag3", "tag1"])));
        assert!(!f.matches(&tags(&["tag1", "tag2"])));
        assert!(!f.matches(&tags(&["tag3"])));
        assert!(!f.matches(&[]));

        let only_neg = Filter::parse("!eu").unwrap();
        assert!(only_neg.matches(&[]));
        assert!(!only_neg.matches(&tags(&["eu"])));

        // A tag both required and excluded matches nothing.
        let contradiction = Filter::parse("a,!a").unwrap();
        assert!(!contradiction.matches(&tags(&["a"])));
        assert!(!contradiction.matches(&[]));
    }

    #[test]
    fn repeated_terms_mean_one() {
        let f = Filter::parse("a,a,!b,!b").unwrap();
        assert_eq!(f.terms().len(), 2);
        assert_eq!(f.to_string(), "a,!b");
    }

    #[test]
    fn bad_filters_point_at_the_term() {
        assert_eq!(
            Filter::parse("a,,b"),
            Err(FilterError::EmptyTerm {
                index: 1,
                offset: 2
            })
        );
        assert_eq!(
            Filter::parse("a,"),
            Err(FilterError::EmptyTerm {
                index: 1,
                offset: 2
            })
        );
        assert_eq!(
            Filter::parse(","),
            Err(FilterError::EmptyTerm {
                index: 0,
                offset: 0
            })
        );
        assert_eq!(
            Filter::parse("!"),
            Err(FilterError::EmptyTerm {
                index: 0,
                offset: 0
            })
        );
        assert_eq!(
            Filter::parse("a,!"),
            Err(FilterError::EmptyTerm {
                index: 1,
                offset: 2
            })
        );
        assert!(matches!(
            Filter::parse("ok,!!x"),
            Err(FilterError::BadTag {
                index: 1,
                offset: 3,
                error: TagError::BadChar { ch: '!', .. }
            })
        ));
        assert!(matches!(
            Filter::parse("a b"),
            Err(FilterError::BadTag {
                index: 0,
                offset: 0,
                ..
            })
        ));
        let long = format!("x,{}", "y".repeat(65));
        assert_eq!(
            Filter::parse(&long),
            Err(FilterError::BadTag {
                index: 1,
                offset: 2,
                error: TagError::TooLong(65)
            })
        );
        let msg = Filter::parse("a,,b").unwrap_err().to_string();
        assert!(msg.contains("term 1"), "{msg}");
    }

    #[test]
    fn display_round_trips() {
        for text in ["", "a", "a,!b,c", "!x:y"] {
            assert_eq!(Filter::parse(text).unwrap().to_string(), text);
        }
    }
}
