//! A stored response: what the layer keeps as a lease's outcome, and reads back to replay.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! version u8 = 1 | kind u8 | status u16 | header count u16
//! per header: name length u16, name, value length u16, value
//! kind 0 (Full): the rest is the body
//! kind 1 (TooLarge): nothing follows; the response did not fit in MAX_OUTCOME_LEN
//! ```

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

const VERSION: u8 = 1;
const FULL: u8 = 0;
const TOO_LARGE: u8 = 1;

/// A response read back from the store.
#[derive(Debug)]
pub(crate) enum Stored {
    /// Status, the kept headers and the whole body.
    Full {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
    /// The handler answered with `status`, but the response was too large to keep.
    TooLarge { status: StatusCode },
}

/// Encodes a response with the headers named in `keep`; `None` if a header is too long to
/// encode (over 64 KiB), which the caller treats like a response too large to keep.
pub(crate) fn encode(
    status: StatusCode,
    headers: &HeaderMap,
    keep: &[HeaderName],
    body: &[u8],
) -> Option<Vec<u8>> {
    let mut kept = Vec::new();
    for name in keep {
        for value in headers.get_all(name) {
            kept.push((name, value));
        }
    }
    let mut out = Vec::with_capacity(6 + body.len() + 64 * kept.len());
    out.extend_from_slice(&[VERSION, FULL]);
    out.extend_from_slice(&status.as_u16().to_be_bytes());
    out.extend_from_slice(&u16::try_from(kept.len()).ok()?.to_be_bytes());
    for (name, value) in kept {
        for part in [name.as_str().as_bytes(), value.as_bytes()] {
            out.extend_from_slice(&u16::try_from(part.len()).ok()?.to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    out.extend_from_slice(body);
    Some(out)
}

/// The marker kept instead of a response too large to store.
pub(crate) fn encode_too_large(status: StatusCode) -> Vec<u8> {
    let mut out = vec![VERSION, TOO_LARGE];
    out.extend_from_slice(&status.as_u16().to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out
}

/// Decodes what [`encode`] or [`encode_too_large`] wrote; `None` for anything else.
pub(crate) fn decode(outcome: &Bytes) -> Option<Stored> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let part = outcome.get(at..at.checked_add(n)?)?;
        at += n;
        Some(part)
    };
    let head = take(6)?;
    let (version, kind) = (head[0], head[1]);
    let status = StatusCode::from_u16(u16::from_be_bytes([head[2], head[3]])).ok()?;
    let count = u16::from_be_bytes([head[4], head[5]]);
    if version != VERSION {
        return None;
    }
    let mut headers = HeaderMap::new();
    for _ in 0..count {
        let len = take(2)?;
        let name = HeaderName::from_bytes(take(usize::from(u16::from_be_bytes([len[0], len[1]])))?)
            .ok()?;
        let len = take(2)?;
        let value =
            HeaderValue::from_bytes(take(usize::from(u16::from_be_bytes([len[0], len[1]])))?)
                .ok()?;
        headers.append(name, value);
    }
    match kind {
        FULL => Some(Stored::Full {
            status,
            headers,
            body: outcome.slice(at..),
        }),
        TOO_LARGE if at == outcome.len() => Some(Stored::TooLarge { status }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    #[test]
    fn round_trip_keeps_status_chosen_headers_and_body() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        headers.insert(header::LOCATION, "/orders/1".parse().unwrap());
        headers.insert(header::DATE, "today".parse().unwrap());
        let keep = [header::CONTENT_TYPE, header::LOCATION];
        let bytes = encode(StatusCode::CREATED, &headers, &keep, b"{\"id\":1}").unwrap();
        let Some(Stored::Full {
            status,
            headers: got,
            body,
        }) = decode(&Bytes::from(bytes))
        else {
            panic!("not decoded")
        };
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(got.len(), 2);
        assert_eq!(got[header::LOCATION], "/orders/1");
        assert!(got.get(header::DATE).is_none());
        assert_eq!(&body[..], b"{\"id\":1}");
    }

    #[test]
    fn marker_and_garbage() {
        let marker = Bytes::from(encode_too_large(StatusCode::OK));
        assert!(matches!(
            decode(&marker),
            Some(Stored::TooLarge {
                status: StatusCode::OK
            })
        ));
        assert!(decode(&Bytes::from_static(b"")).is_none());
        assert!(decode(&Bytes::from_static(b"\x02\x00\x00\xc8\x00\x00")).is_none());
        assert!(decode(&Bytes::from_static(b"\x01\x00\x00\xc8\x00\x01\x00")).is_none());
    }
}
