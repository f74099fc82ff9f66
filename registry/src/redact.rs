//! URLs in text that leaves kiln (cache descriptions, messages, logs) without the secrets they may carry.

/// `entry` with the user and password of any URL in it replaced by `***`: a proxy build arg such as
/// `HTTPS_PROXY=http://user:secret@proxy:3128` reaches RUN's environment, but its credentials must not reach
/// a cache description that travels to a registry.
pub fn without_credentials(entry: &str) -> String {
    // A proxy value may leave out the scheme (`HTTP_PROXY=user:secret@proxy:3128`), as curl allows.
    if let Some((key, value)) = entry.split_once('=')
        && !value.contains("://")
        && let Some(at) = value.find('@')
        && value[..at].contains(':')
        && !value[..at].contains(['/', ' '])
    {
        return format!("{key}=***{}", &value[at..]);
    }
    let mut out = String::with_capacity(entry.len());
    let mut rest = entry;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let authority_end = tail.find(['/', '?', '#', ' ']).unwrap_or(tail.len());
        match tail[..authority_end].rfind('@') {
            Some(userinfo_end) => {
                out.push_str("***");
                rest = &tail[userinfo_end..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// `message` with every URL's credentials replaced (see [`without_credentials`]) and its query string too:
/// a registry answers a blob request with a redirect to a presigned storage URL whose query is its
/// signature, and an error naming that URL must not hand it to a log or a CI transcript.
pub fn redact_urls(message: &str) -> String {
    let message = without_credentials(message);
    let mut out = String::with_capacity(message.len());
    let mut rest = message.as_str();
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let url_end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>'))
            .unwrap_or(tail.len());
        let url = &tail[..url_end];
        match url.find('?') {
            Some(query) => {
                out.push_str(&url[..query]);
                out.push_str("?***");
            }
            None => out.push_str(url),
        }
        rest = &tail[url_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_left_out() {
        assert_eq!(
            without_credentials("HTTPS_PROXY=http://alice:s3cret@proxy:3128/"),
            "HTTPS_PROXY=http://***@proxy:3128/"
        );
        assert_eq!(
            without_credentials("URL=https://example.com/a@b"),
            "URL=https://example.com/a@b"
        );
        assert_eq!(without_credentials("PLAIN=value"), "PLAIN=value");
        assert_eq!(
            without_credentials("HTTP_PROXY=bob:pw@proxy:3128"),
            "HTTP_PROXY=***@proxy:3128"
        );
        assert_eq!(
            without_credentials("EMAIL=me@example.com"),
            "EMAIL=me@example.com"
        );
    }

    #[test]
    fn messages_lose_url_queries_and_userinfo() {
        assert_eq!(
            redact_urls(
                "error sending request for url (https://s3.example.com/blob?X-Amz-Signature=abc&X-Amz-Credential=k): timed out"
            ),
            "error sending request for url (https://s3.example.com/blob?***): timed out"
        );
        assert_eq!(
            redact_urls("GET http://bob:pw@127.0.0.1:5000/v2/ failed"),
            "GET http://***@127.0.0.1:5000/v2/ failed"
        );
        assert_eq!(redact_urls("no url here"), "no url here");
    }
}
