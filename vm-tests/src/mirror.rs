//! Which Debian mirror the guest image is built from.
//!
//! The mirror is whatever the host's apt already uses for the Debian archive,
//! read at run time, so that no address is written into the repository and a
//! machine with a local mirror or proxy uses it without configuration.
//! `SEAMLESS_LAB_MIRROR` overrides it.

use std::fs;
use std::path::Path;

use anyhow::{Result, bail};

/// The Debian archive mirror of the host: the override if set, else the first
/// `debian` archive (not the security archive) named in its apt sources.
pub fn host_mirror() -> Result<String> {
    if let Ok(url) = std::env::var("SEAMLESS_LAB_MIRROR")
        && !url.trim().is_empty()
    {
        return Ok(url.trim().trim_end_matches('/').to_string());
    }
    let mut texts = Vec::new();
    let etc = Path::new("/etc/apt");
    if let Ok(text) = fs::read_to_string(etc.join("sources.list")) {
        texts.push(("sources.list".to_string(), text));
    }
    if let Ok(dir) = fs::read_dir(etc.join("sources.list.d")) {
        let mut names: Vec<_> = dir.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        names.sort();
        for path in names {
            if let Ok(text) = fs::read_to_string(&path) {
                texts.push((path.display().to_string(), text));
            }
        }
    }
    for (name, text) in &texts {
        let found = if name.ends_with(".sources") {
            mirror_from_deb822(text)
        } else if name.ends_with(".list") {
            mirror_from_one_line(text)
        } else {
            None
        };
        if let Some(url) = found {
            return Ok(url);
        }
    }
    bail!(
        "no Debian archive found in the host's apt sources (/etc/apt/sources.list, \
         /etc/apt/sources.list.d/*.sources|*.list); set SEAMLESS_LAB_MIRROR to a Debian mirror URL"
    )
}

/// Is this URI the main Debian archive (not security, not a third party)?
fn is_debian_archive(uri: &str) -> bool {
    let uri = uri.trim_end_matches('/');
    (uri.starts_with("http://") || uri.starts_with("https://")) && uri.ends_with("/debian")
}

/// The first Debian archive URI of a one-line-style sources file.
pub fn mirror_from_one_line(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("deb ") || l.starts_with("deb\t"))
        .filter_map(|line| {
            // deb [options] URI suite components...
            let mut words = line.split_whitespace().skip(1).peekable();
            if words.peek().is_some_and(|w| w.starts_with('[')) {
                for w in words.by_ref() {
                    if w.ends_with(']') {
                        break;
                    }
                }
            }
            words.next().map(str::to_string)
        })
        .find(|uri| is_debian_archive(uri))
        .map(|uri| uri.trim_end_matches('/').to_string())
}

/// The first Debian archive URI of a deb822 `.sources` file whose stanza is
/// enabled and has binary packages.
pub fn mirror_from_deb822(text: &str) -> Option<String> {
    for stanza in text.split("\n\n") {
        let mut uris = Vec::new();
        let mut types_deb = false;
        let mut enabled = true;
        for line in stanza.lines() {
            if line.trim_start().starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            match key.trim().to_ascii_lowercase().as_str() {
                "types" => types_deb = value.split_whitespace().any(|t| t == "deb"),
                "uris" => uris.extend(value.split_whitespace().map(str::to_string)),
                "enabled" => enabled = value.trim() != "no",
                _ => {}
            }
        }
        if types_deb
            && enabled
            && let Some(uri) = uris.into_iter().find(|u| is_debian_archive(u))
        {
            return Some(uri.trim_end_matches('/').to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_skips_security_and_comments() {
        let text = "Types: deb\n# http://snapshot.example/debian\nURIs: http://mirror.example/debian/\nSuites: bookworm\n\n\
                    Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            mirror_from_deb822(text).as_deref(),
            Some("http://mirror.example/debian")
        );
    }

    #[test]
    fn deb822_ignores_disabled_and_source_only() {
        let text = "Types: deb-src\nURIs: http://a.example/debian\n\n\
                    Types: deb\nEnabled: no\nURIs: http://b.example/debian\n\n\
                    Types: deb\nURIs: http://c.example/debian\n";
        assert_eq!(
            mirror_from_deb822(text).as_deref(),
            Some("http://c.example/debian")
        );
    }

    #[test]
    fn one_line_with_options_and_third_parties() {
        let text = "deb https://packages.example.com/apt stable main\n\
                    # deb http://commented.example/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n";
        assert_eq!(
            mirror_from_one_line(text).as_deref(),
            Some("http://m.example/debian")
        );
    }

    #[test]
    fn nothing_found() {
        assert_eq!(
            mirror_from_one_line("deb http://x.example/ubuntu jammy main\n"),
            None
        );
        assert_eq!(mirror_from_deb822(""), None);
    }
}
