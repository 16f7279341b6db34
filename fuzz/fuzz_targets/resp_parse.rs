//! The input is bytes a client sent to `oncelog serve`. The parser (`cli/src/resp.rs`,
//! compiled in here as it is) must never panic and never answer outside the buffer; a
//! request it accepts must parse the same from any buffer that holds it, and every proper
//! prefix of it must be "incomplete", never an error. Requests encoded from the input's
//! bytes must parse back to the same arguments.
#![no_main]

#[path = "../../cli/src/resp.rs"]
#[allow(dead_code)]
mod resp;

use libfuzzer_sys::fuzz_target;
use resp::{parse, Limits};

const LIMITS: Limits = Limits {
    max_args: 64,
    max_bulk: 1024,
    max_inline: 2048,
};

fuzz_target!(|data: &[u8]| {
    check(data);
    // The same bytes as the arguments of a well-formed request: the first byte says how
    // many arguments, the rest is cut into that many pieces.
    if let Some((&n, rest)) = data.split_first() {
        let n = usize::from(n % 8) + 1;
        let size = rest.len().div_ceil(n).max(1);
        let pieces: Vec<&[u8]> = rest.chunks(size).collect();
        let mut frame = format!("*{}\r\n", pieces.len()).into_bytes();
        for p in &pieces {
            frame.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
            frame.extend_from_slice(p);
            frame.extend_from_slice(b"\r\n");
        }
        match parse(&frame, &LIMITS) {
            Ok(Some(r)) => {
                assert_eq!(r.len, frame.len());
                let back: Vec<&[u8]> = r.args.iter().map(|a| &frame[a.clone()]).collect();
                assert_eq!(back, pieces);
            }
            Ok(None) => panic!("a whole request read as incomplete"),
            // Over the limits is the only reason to refuse it.
            Err(_) => assert!(pieces.len() > LIMITS.max_args || size > LIMITS.max_bulk),
        }
        check(&frame);
    }
});

fn check(data: &[u8]) {
    let Ok(Some(r)) = parse(data, &LIMITS) else {
        return;
    };
    assert!(r.len > 0 && r.len <= data.len());
    assert!(r.args.len() <= LIMITS.max_args);
    for a in &r.args {
        assert!(a.start <= a.end && a.end <= r.len);
    }
    // The request alone parses the same; followed by anything, too.
    assert_eq!(parse(&data[..r.len], &LIMITS), Ok(Some(r.clone())));
    // Every proper prefix is incomplete (checked at up to 64 cuts).
    let step = (r.len / 64).max(1);
    for cut in (0..r.len).step_by(step) {
        assert_eq!(parse(&data[..cut], &LIMITS), Ok(None), "cut at {cut}");
    }
}
