//! Size and count limits for accepted events, and their enforcement.

use super::error::{EventError, EventErrorKind};

/// Bounds an event must respect to be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted event, in bytes of its JSON form. Default 65_536.
    pub max_event_bytes: usize,
    /// Most tags an event may carry. Default 2_000.
    pub max_tags: usize,
    /// Longest accepted tag field (any position, name included), in bytes. Default 1_024.
    pub max_tag_value_bytes: usize,
    /// Longest accepted content, in bytes. Default 65_536.
    pub max_content_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_event_bytes: 65_536,
            max_tags: 2_000,
            max_tag_value_bytes: 1_024,
            max_content_bytes: 65_536,
        }
    }
}

impl Limits {
    /// Rejects an event whose serialized JSON is `json_len` bytes when that exceeds the limit.
    pub(crate) fn check_event_size(&self, json_len: usize) -> Result<(), EventError> {
        if json_len > self.max_event_bytes {
            return Err(EventError::new(
                EventErrorKind::TooLarge,
                format!(
                    "event is {json_len} bytes, more than the limit of {} bytes",
                    self.max_event_bytes
                ),
            ));
        }
        Ok(())
    }

    /// The tag and content checks, in order: tag count, each tag field's length, content length.
    pub(crate) fn check_tags_and_content(
        &self,
        tags: &[Vec<String>],
        content: &str,
    ) -> Result<(), EventError> {
        if tags.len() > self.max_tags {
            return Err(EventError::new(
                EventErrorKind::TooManyTags,
                format!(
                    "event has {} tags, more than the limit of {}",
                    tags.len(),
                    self.max_tags
                ),
            ));
        }
        for (tag_index, tag) in tags.iter().enumerate() {
            for (field_index, field) in tag.iter().enumerate() {
                if field.len() > self.max_tag_value_bytes {
                    return Err(EventError::new(
                        EventErrorKind::TagTooLong,
                        format!(
                            "tag {tag_index} field {field_index} is {} bytes, more than the limit of {}",
                            field.len(),
                            self.max_tag_value_bytes
                        ),
                    ));
                }
            }
        }
        if content.len() > self.max_content_bytes {
            return Err(EventError::new(
                EventErrorKind::TooLarge,
                format!(
                    "content is {} bytes, more than the limit of {}",
                    content.len(),
                    self.max_content_bytes
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(n: usize, field_len: usize) -> Vec<Vec<String>> {
        (0..n)
            .map(|_| vec!["t".to_owned(), "x".repeat(field_len)])
            .collect()
    }

    #[test]
    fn defaults() {
        let l = Limits::default();
        assert_eq!(l.max_event_bytes, 65_536);
        assert_eq!(l.max_tags, 2_000);
        assert_eq!(l.max_tag_value_bytes, 1_024);
        assert_eq!(l.max_content_bytes, 65_536);
    }

    #[test]
    fn boundaries_are_inclusive() {
        let l = Limits {
            max_event_bytes: 100,
            max_tags: 2,
            max_tag_value_bytes: 4,
            max_content_bytes: 3,
        };
        assert!(l.check_event_size(100).is_ok());
        assert_eq!(
            l.check_event_size(101).unwrap_err().kind(),
            EventErrorKind::TooLarge
        );
        assert!(l.check_tags_and_content(&tags(2, 4), "abc").is_ok());

        let e = l.check_tags_and_content(&tags(3, 1), "").unwrap_err();
        assert_eq!(e.kind(), EventErrorKind::TooManyTags);
        assert_eq!(e.message(), "event has 3 tags, more than the limit of 2");

        let e = l.check_tags_and_content(&tags(1, 5), "").unwrap_err();
        assert_eq!(e.kind(), EventErrorKind::TagTooLong);
        assert!(e.message().contains("tag 0 field 1 is 5 bytes"), "{e}");

        let e = l.check_tags_and_content(&[], "abcd").unwrap_err();
        assert_eq!(e.kind(), EventErrorKind::TooLarge);
        assert!(e.message().starts_with("content is 4 bytes"), "{e}");
    }

    #[test]
    fn tag_count_is_checked_before_field_length() {
        let l = Limits {
            max_tags: 1,
            max_tag_value_bytes: 1,
            ..Limits::default()
        };
        let e = l.check_tags_and_content(&tags(2, 10), "").unwrap_err();
        assert_eq!(e.kind(), EventErrorKind::TooManyTags);
    }

    #[test]
    fn names_count_as_tag_fields() {
        let l = Limits {
            max_tag_value_bytes: 3,
            ..Limits::default()
        };
        let t = vec![vec!["long-name".to_owned()]];
        let e = l.check_tags_and_content(&t, "").unwrap_err();
        assert_eq!(e.kind(), EventErrorKind::TagTooLong);
        assert!(e.message().contains("field 0"), "{e}");
    }
}
