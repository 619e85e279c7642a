//! A PostgreSQL URL (the board's, a store's) as logs and error messages may show it: without
//! its password.
//!
//! PostgreSQL takes two forms (libpq's, which `tokio-postgres` follows): a URI
//! (`postgresql://user:secret@host/db?password=secret`) and key-value pairs
//! (`host=/run/pg user=me password='se cret' dbname=board`). The password may sit in the URI's
//! user info, in its query, or in a `password` pair; each becomes [`HIDDEN`].

/// What a password is replaced with.
pub const HIDDEN: &str = "***";

/// `url` with every password replaced by [`HIDDEN`].
#[must_use]
pub fn redact(url: &str) -> String {
    let trimmed = url.trim();
    if trimmed.starts_with("postgresql://") || trimmed.starts_with("postgres://") {
        redact_uri(trimmed)
    } else {
        redact_pairs(trimmed)
    }
}

fn redact_uri(uri: &str) -> String {
    let (scheme, rest) = uri.split_once("://").unwrap_or(("", uri));
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let authority_end = before_query.find('/').unwrap_or(before_query.len());
    let (authority, path) = before_query.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, hosts)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{user}:{HIDDEN}@{hosts}"),
            None => format!("{user_info}@{hosts}"),
        },
        None => authority.to_owned(),
    };
    let mut out = format!("{scheme}://{authority}{path}");
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if key == "password" => format!("{key}={HIDDEN}"),
                _ => param.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// Key-value pairs: `key = value`, the value bare (up to white space) or single-quoted with
/// backslash escapes. Text that does not parse as pairs is hidden whole from the first bad
/// spot on: better a shorter message than a leaked secret.
fn redact_pairs(text: &str) -> String {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else {
            out.push(HIDDEN.to_owned());
            break;
        };
        let key = rest[..eq].trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            out.push(HIDDEN.to_owned());
            break;
        }
        let after = rest[eq + 1..].trim_start();
        let (value, remaining) = split_value(after);
        if key == "password" {
            out.push(format!("{key}={HIDDEN}"));
        } else {
            out.push(format!("{key}={value}"));
        }
        rest = remaining.trim_start();
    }
    out.join(" ")
}

/// The value at the start of `text` as written (quotes kept), and what follows it.
fn split_value(text: &str) -> (&str, &str) {
    if let Some(quoted) = text.strip_prefix('\'') {
        let mut escaped = false;
        for (i, c) in quoted.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '\'' if !escaped => return text.split_at(i + 2),
                _ => escaped = false,
            }
        }
        (text, "")
    } else {
        let end = text.find(char::is_whitespace).unwrap_or(text.len());
        text.split_at(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uri_loses_its_password_in_the_user_info_and_the_query() {
        assert_eq!(
            redact("postgresql://me:s3cret@db.example:5432/board?sslmode=disable"),
            "postgresql://me:***@db.example:5432/board?sslmode=disable"
        );
        assert_eq!(
            redact("postgres://me@db/board?password=s3cret&application_name=x"),
            "postgres://me@db/board?password=***&application_name=x"
        );
        assert_eq!(
            redact("postgresql://me:p%40ss@w@host/db"),
            "postgresql://me:***@host/db"
        );
        assert_eq!(
            redact("postgresql:///board?host=/run/pg"),
            "postgresql:///board?host=/run/pg"
        );
    }

    #[test]
    fn key_value_pairs_lose_the_password_quoted_or_not() {
        assert_eq!(
            redact("host=/tmp/pg user=postgres password=s3cret dbname=board"),
            "host=/tmp/pg user=postgres password=*** dbname=board"
        );
        assert_eq!(
            redact("password = 'se cr\\'et' host=/tmp/pg"),
            "password=*** host=/tmp/pg"
        );
        assert_eq!(
            redact("host='/a b' dbname=board"),
            "host='/a b' dbname=board"
        );
    }

    #[test]
    fn text_that_is_not_pairs_is_hidden_from_the_bad_spot() {
        assert_eq!(redact("host=/tmp/pg s3cret"), "host=/tmp/pg ***");
        assert_eq!(redact("garbage"), "***");
        assert!(!redact("password='unterminated s3cret").contains("s3cret"));
    }
}
