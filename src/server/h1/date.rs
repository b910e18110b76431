//! The `Date` field every response carries, formatted once a second per serving thread
//! instead of once per response.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::values::clock::http_date;

struct Cached {
    second: u64,
    text: String,
}

thread_local! {
    static CACHE: RefCell<Cached> = const { RefCell::new(Cached { second: u64::MAX, text: String::new() }) };
}

/// Call `with` on this second's `Date` value (`Thu, 03 Dec 2026 08:00:00 GMT`).
pub fn with_date<R>(with: impl FnOnce(&[u8]) -> R) -> R {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.second != second {
            cache.second = second;
            cache.text = http_date(now);
        }
        with(cache.text.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::with_date;

    #[test]
    fn a_date_of_the_right_shape() {
        let date = with_date(|d| String::from_utf8(d.to_vec()).unwrap());
        assert_eq!(date.len(), 29, "{date}");
        assert!(date.ends_with(" GMT"));
        assert_eq!(with_date(|d| d.len()), 29);
    }
}
