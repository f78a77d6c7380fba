//! Which of two kernel releases is newer.
//!
//! A kernel update normally moves forward; going back to an older kernel
//! may reopen the very hole the update closes, so the plan refuses it
//! unless the operator says `--allow-downgrade`. The releases compared are
//! what the kernels report themselves (`uname -r`, the bzImage's version
//! string), such as `6.12.95+deb12-amd64` or `6.1.0-28-amd64`: no package
//! metadata is needed, and they sort the way `sort -V` and dpkg's version
//! comparison sort them: runs of digits by value, the rest by character,
//! with a `~` before everything, even the end (`6.13~rc1` < `6.13`).

use std::cmp::Ordering;

/// Compares two kernel releases; `Less` when `a` is older than `b`.
pub fn compare_releases(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        // Non-digit runs, character by character, `~` lowest, the end
        // next, letters before other characters (dpkg's order).
        let (text_a, rest_a) = split_run(a, |c| !c.is_ascii_digit());
        let (text_b, rest_b) = split_run(b, |c| !c.is_ascii_digit());
        let order = compare_text(text_a, text_b);
        if order != Ordering::Equal {
            return order;
        }
        let (digits_a, rest_a) = split_run(rest_a, |c| c.is_ascii_digit());
        let (digits_b, rest_b) = split_run(rest_b, |c| c.is_ascii_digit());
        let order = compare_digits(digits_a, digits_b);
        if order != Ordering::Equal {
            return order;
        }
        if rest_a.is_empty() && rest_b.is_empty() {
            return Ordering::Equal;
        }
        (a, b) = (rest_a, rest_b);
    }
}

fn split_run(s: &[u8], take: impl Fn(u8) -> bool) -> (&[u8], &[u8]) {
    let end = s.iter().position(|&c| !take(c)).unwrap_or(s.len());
    s.split_at(end)
}

/// dpkg's weight of a character in a non-digit run; `None` is the end.
fn weight(c: Option<u8>) -> i32 {
    match c {
        Some(b'~') => -1,
        None => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

fn compare_text(a: &[u8], b: &[u8]) -> Ordering {
    for i in 0..a.len().max(b.len()) {
        let order = weight(a.get(i).copied()).cmp(&weight(b.get(i).copied()));
        if order != Ordering::Equal {
            return order;
        }
    }
    Ordering::Equal
}

fn compare_digits(a: &[u8], b: &[u8]) -> Ordering {
    let trim = |s: &[u8]| -> Vec<u8> { s.iter().copied().skip_while(|&c| c == b'0').collect() };
    let (a, b) = (trim(a), trim(b));
    a.len().cmp(&b.len()).then_with(|| a.cmp(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_kernel_releases_sort_by_version() {
        let older_first = [
            "6.1.0-28-amd64",
            "6.1.0-30-amd64",
            "6.12.9+bpo-amd64",
            "6.12.95+deb12-amd64",
            "6.12.117+deb13-amd64",
            "6.13~rc1-amd64",
            "6.13-amd64",
            "7.0.1+deb13-amd64",
        ];
        for (i, a) in older_first.iter().enumerate() {
            assert_eq!(compare_releases(a, a), Ordering::Equal, "{a}");
            for b in &older_first[i + 1..] {
                assert_eq!(compare_releases(a, b), Ordering::Less, "{a} < {b}");
                assert_eq!(compare_releases(b, a), Ordering::Greater, "{b} > {a}");
            }
        }
        assert_eq!(compare_releases("6.012", "6.12"), Ordering::Equal);
    }
}
