//! Topic names and subscription patterns, the way NATS users know them.
//!
//! A topic is a sequence of non-empty tokens separated by dots: `orders.created`,
//! `orders.eu.cancelled`. A pattern may use two wildcards, each a whole token:
//!
//! - `*` matches exactly one token: `orders.*` matches `orders.created` but not
//!   `orders.eu.cancelled` or `orders`;
//! - `>` matches one or more tokens and must come last: `orders.>` matches both of the above,
//!   but not `orders` itself.

/// Checks a topic that events are published on: tokens only, no wildcards.
///
/// Every `publish` calls it, so the usual topic (printable ASCII) is checked in one pass over
/// its bytes, without allocating; anything else, and the message of a bad topic, comes from
/// [`tokens`].
pub(crate) fn check_topic(topic: &str) -> Result<(), String> {
    if plain_ascii_topic(topic) {
        return Ok(());
    }
    for token in tokens(topic)? {
        if token == "*" || token == ">" {
            return Err(format!(
                "topic `{topic}` contains the wildcard `{token}`: only subscriptions may use wildcards"
            ));
        }
    }
    Ok(())
}

/// Whether `topic` is a valid topic of printable ASCII: non-empty tokens, none a wildcard.
fn plain_ascii_topic(topic: &str) -> bool {
    let wildcard = |len: usize, first: u8| len == 1 && matches!(first, b'*' | b'>');
    let (mut len, mut first) = (0, 0);
    for &b in topic.as_bytes() {
        if b == b'.' {
            if len == 0 || wildcard(len, first) {
                return false;
            }
            len = 0;
        } else if b.is_ascii_graphic() {
            if len == 0 {
                first = b;
            }
            len += 1;
        } else {
            return false;
        }
    }
    len > 0 && !wildcard(len, first)
}

/// Checks a subscription pattern: tokens, `*` tokens, and at most a final `>` token.
pub(crate) fn check_pattern(pattern: &str) -> Result<(), String> {
    let tokens = tokens(pattern)?;
    let last = tokens.len() - 1;
    for (i, token) in tokens.iter().enumerate() {
        if *token == ">" && i != last {
            return Err(format!(
                "pattern `{pattern}`: `>` matches the rest of a topic, so it must be the last token"
            ));
        }
        if token.len() > 1 && (token.contains('*') || token.contains('>')) {
            return Err(format!(
                "pattern `{pattern}`: wildcards are whole tokens (`orders.*`), not parts of one (`{token}`)"
            ));
        }
    }
    Ok(())
}

/// Whether `topic` matches `pattern` (both already checked).
pub(crate) fn matches(pattern: &str, topic: &str) -> bool {
    let mut topic_tokens = topic.split('.');
    for token in pattern.split('.') {
        match (token, topic_tokens.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (literal, Some(t)) if literal == t => {}
            _ => return false,
        }
    }
    topic_tokens.next().is_none()
}

fn tokens(text: &str) -> Result<Vec<&str>, String> {
    if text.is_empty() {
        return Err("a topic or pattern cannot be empty".into());
    }
    if text.chars().any(char::is_whitespace) {
        return Err(format!("`{text}` contains whitespace"));
    }
    let tokens: Vec<&str> = text.split('.').collect();
    if tokens.iter().any(|t| t.is_empty()) {
        return Err(format!(
            "`{text}` has an empty token (a leading, trailing or doubled `.`)"
        ));
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_patterns_match_only_themselves() {
        assert!(matches("orders.created", "orders.created"));
        assert!(!matches("orders.created", "orders.cancelled"));
        assert!(!matches("orders.created", "orders.created.eu"));
        assert!(!matches("orders.created", "orders"));
    }

    #[test]
    fn star_matches_exactly_one_token() {
        assert!(matches("orders.*", "orders.created"));
        assert!(matches("*.created", "orders.created"));
        assert!(matches("orders.*.cancelled", "orders.eu.cancelled"));
        assert!(!matches("orders.*", "orders"));
        assert!(!matches("orders.*", "orders.eu.cancelled"));
        assert!(!matches("orders.*", "invoices.created"));
    }

    #[test]
    fn greater_than_matches_one_or_more_tokens() {
        assert!(matches("orders.>", "orders.created"));
        assert!(matches("orders.>", "orders.eu.cancelled"));
        assert!(matches(">", "anything.at.all"));
        assert!(!matches("orders.>", "orders"));
        assert!(!matches("orders.>", "invoices.created"));
        assert!(matches("*.eu.>", "orders.eu.cancelled.late"));
    }

    #[test]
    fn malformed_topics_and_patterns_are_refused_with_a_reason() {
        for bad in [
            "",
            "orders..created",
            ".orders",
            "orders.",
            "orders created",
            "orders.\tcreated",
            "*",
        ] {
            assert!(check_topic(bad).is_err(), "{bad:?}");
            if bad != "*" {
                assert!(check_pattern(bad).is_err(), "{bad:?}");
            }
        }
        assert!(check_topic("orders.*").is_err());
        assert!(check_topic("orders.>").is_err());
        assert!(check_pattern("orders.>.created").is_err());
        assert!(check_pattern("orders.cre*").is_err());
        assert!(check_pattern("orders.>>").is_err());
        for good in ["orders", "orders.*", "orders.>", "*.*", ">", "a-b_c.d:e"] {
            assert!(check_pattern(good).is_ok(), "{good}");
        }
        assert!(check_topic("orders.created").is_ok());
        // The fast path and the full check agree on what they pass.
        for good in ["orders", "a-b_c.d:e", "orders.cre*", "commandes.créées"] {
            assert!(check_topic(good).is_ok(), "{good}");
            assert_eq!(plain_ascii_topic(good), good.is_ascii(), "{good}");
        }
        for bad in ["*", ">", "a.*", "*.a", "a..b", ".", "a.", "a b", "a.>.b"] {
            assert!(!plain_ascii_topic(bad), "{bad}");
        }
        let err = check_topic("orders..created").expect_err("an empty token");
        assert!(err.contains("empty token"), "{err}");
    }
}
