//! The next boot's kernel command line.
//!
//! The next kernel should boot exactly like this one (same root, same
//! console, same options), so its command line starts from the running
//! kernel's `/proc/cmdline`. Three things change:
//!
//! * `BOOT_IMAGE=` is dropped: the boot loader adds it to name the kernel
//!   *it* booted, which is not the kernel being kexec'd.
//! * Operator overrides (`--append`) are applied: `key=value` replaces every
//!   existing `key` / `key=...`, a bare flag is added unless already there.
//! * The marker `seamless_reboot.transaction=<id>` is added (any previous
//!   marker removed). Early in the next boot the restore side finds it with
//!   [`marker_from_cmdline`] and so knows that this boot is the second half
//!   of that transaction and not an ordinary boot. With it goes
//!   `seamless_reboot.units=<unit>,<unit>`, the units to restore
//!   ([`units_from_cmdline`]): the systemd generator runs before any
//!   filesystem of `/etc/fstab` is mounted, so when the image store is on
//!   one of them (`/var` on its own filesystem) the command line is all the
//!   generator can read, and it must still know which units to hold back
//!   for their restore.
//!
//! # Kernel rules followed
//! * Splitting (`next_arg` in `lib/cmdline.c`/`kernel/params.c`): words are
//!   separated by whitespace outside double quotes; a `"` toggles quoting
//!   anywhere in a word, so both `key="a b"` and `"key=a b"` are one word.
//!   Words are kept verbatim, quotes included.
//! * In parameter names `-` and `_` are the same (`parameq`); keys are
//!   compared that way here.
//! * A bare `--` ends the kernel's parameters; what follows goes to init.
//!   Removals and overrides apply only before it, and the marker is put
//!   before it, so init's arguments stay untouched.
//! * Length: x86 `COMMAND_LINE_SIZE` is 2048 (`arch/x86/include/asm/setup.h`)
//!   and the bzImage header advertises `cmdline_size = COMMAND_LINE_SIZE - 1`
//!   (`arch/x86/boot/header.S`). `kexec_file_load`'s bzImage64 loader
//!   (`bzImage64_load` in `arch/x86/kernel/kexec-bzimage64.c`) refuses with
//!   `EINVAL` when `cmdline_len + MAX_ELFCOREHDR_STR_LEN (30) >
//!   cmdline_size`, for every load, not only crash kernels, and
//!   `cmdline_len` counts the trailing NUL. So the usable length is
//!   `2047 - 30 - 1 = 2016` bytes; that, not 2048, is enforced.

use std::fmt;
use std::path::{Path, PathBuf};

/// x86 `COMMAND_LINE_SIZE` (`arch/x86/include/asm/setup.h`).
pub const COMMAND_LINE_SIZE: usize = 2048;

/// `MAX_ELFCOREHDR_STR_LEN` in `arch/x86/kernel/kexec-bzimage64.c`: room the
/// bzImage64 loader keeps free in every command line.
pub const ELFCOREHDR_RESERVE: usize = 30;

/// The command line parameter carrying the transaction id.
pub const MARKER_KEY: &str = "seamless_reboot.transaction";

/// The command line parameter naming the units to restore, comma-separated.
pub const UNITS_KEY: &str = "seamless_reboot.units";

/// Longest command line, in bytes without the NUL, for a standard x86
/// kernel (`cmdline_size` 2047): 2016.
pub const DEFAULT_MAX_CMDLINE_LEN: usize = max_cmdline_len((COMMAND_LINE_SIZE - 1) as u32);

/// Longest command line (bytes, without the terminating NUL) that
/// `kexec_file_load` accepts for a kernel whose header advertises
/// `cmdline_size`: `cmdline_size - 30 - 1`, and never more than
/// `COMMAND_LINE_SIZE - 1`.
pub const fn max_cmdline_len(cmdline_size: u32) -> usize {
    let by_header = (cmdline_size as usize).saturating_sub(ELFCOREHDR_RESERVE + 1);
    if by_header < COMMAND_LINE_SIZE - 1 {
        by_header
    } else {
        COMMAND_LINE_SIZE - 1
    }
}

/// Why a command line could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    /// The current command line could not be read.
    #[error("cannot read the current kernel command line from {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A transaction id must be 1 to 64 characters of `a-z`, `0-9` and `-`.
    #[error("invalid transaction id {id:?}: expected 1 to 64 characters of a-z, 0-9 and '-'")]
    InvalidTransactionId { id: String },
    /// An `--append` argument is not a single well-formed parameter.
    #[error("invalid kernel parameter {arg:?}: {reason}")]
    InvalidOverride { arg: String, reason: &'static str },
    /// An `--append` argument tries to set a parameter this tool manages.
    #[error("kernel parameter {arg:?} is managed by seamless-reboot and cannot be overridden")]
    ReservedOverride { arg: String },
    /// An `--append` argument would change what the next boot runs (its
    /// init, its target, extra units or a debug shell): the update restores
    /// services into the boot they were checkpointed for, nothing else.
    #[error(
        "kernel parameter {arg:?} would change what the next boot runs (init, target, units or \
         a debug shell); seamless-reboot does not pass it on"
    )]
    ChangesBoot { arg: String },
    /// A kept parameter of the current command line opens a double quote it
    /// never closes: the kernel reads the quote to the end of the line, so
    /// the marker appended after it would be swallowed and the next boot
    /// would not know it is the update's.
    #[error(
        "the current kernel command line has an unterminated double quote in {word:?}; the \
         update's marker would be lost inside it in the next boot"
    )]
    UnterminatedQuote { word: String },
    /// A unit name that systemd would not accept cannot be named to the
    /// next boot.
    #[error("{unit:?} is not a valid systemd unit name")]
    InvalidUnitName { unit: String },
    /// The result does not fit the kernel's command line buffer.
    #[error(
        "the next kernel command line is {len} bytes, but kexec_file_load accepts at most {max} \
         (x86 COMMAND_LINE_SIZE 2048, less the loader's reserve); remove parameters"
    )]
    TooLong { len: usize, max: usize },
}

/// A validated transaction id: 1 to 64 characters of `[a-z0-9-]`, safe to
/// put on the command line unquoted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransactionId(String);

impl TransactionId {
    /// Validates `id`.
    pub fn new(id: &str) -> Result<Self, CmdlineError> {
        if Self::is_valid(id) {
            Ok(Self(id.to_owned()))
        } else {
            Err(CmdlineError::InvalidTransactionId { id: id.to_owned() })
        }
    }

    /// Whether `id` is 1 to 64 characters of `[a-z0-9-]`.
    pub fn is_valid(id: &str) -> bool {
        (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for TransactionId {
    type Err = CmdlineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// What the next boot reads from its command line: the transaction and the
/// units it restores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootMarker {
    pub id: TransactionId,
    /// Canonical unit names ([`is_valid_unit_name`]).
    pub units: Vec<String>,
}

impl BootMarker {
    /// The marker for `id` restoring `units`; fails on a name that is not a
    /// valid unit name (it could not be read back from the command line).
    pub fn new(id: TransactionId, units: &[String]) -> Result<Self, CmdlineError> {
        if let Some(bad) = units.iter().find(|u| !is_valid_unit_name(u)) {
            return Err(CmdlineError::InvalidUnitName { unit: bad.clone() });
        }
        Ok(BootMarker {
            id,
            units: units.to_vec(),
        })
    }

    /// The parameters added to the next command line.
    fn words(&self) -> Vec<String> {
        let mut words = vec![format!("{MARKER_KEY}={}", self.id)];
        if !self.units.is_empty() {
            words.push(format!("{UNITS_KEY}={}", self.units.join(",")));
        }
        words
    }
}

/// Whether `name` is a unit name as systemd accepts it (`unit_name_is_valid`:
/// at most 255 characters of `[A-Za-z0-9:_.\\@-]`, with a suffix). Such a
/// name never needs quoting on the command line and has no comma.
pub fn is_valid_unit_name(name: &str) -> bool {
    (3..=255).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b":-_.\\@".contains(&c))
        && name
            .rsplit_once('.')
            .is_some_and(|(stem, suffix)| !stem.is_empty() && !suffix.is_empty())
}

/// The kernel's `isspace` for command lines (space, \t, \n, \v, \f, \r).
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// Splits a command line into words the way the kernel does: whitespace
/// separates words except inside double quotes. Words are returned
/// verbatim (quotes kept). An unterminated quote runs to the end.
pub fn split_cmdline(cmdline: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut start: Option<usize> = None;
    let mut in_quote = false;
    for (i, c) in cmdline.char_indices() {
        if is_space(c) && !in_quote {
            if let Some(s) = start.take() {
                words.push(&cmdline[s..i]);
            }
            continue;
        }
        if start.is_none() {
            start = Some(i);
        }
        if c == '"' {
            in_quote = !in_quote;
        }
    }
    if let Some(s) = start {
        words.push(&cmdline[s..]);
    }
    words
}

/// The parameter name of a word: up to the first `=`, without a leading
/// quote (`"key=a b"`) or, for a quoted bare word, the closing one.
pub fn param_key(word: &str) -> &str {
    let w = word.strip_prefix('"').unwrap_or(word);
    match w.find('=') {
        Some(eq) => &w[..eq],
        None => w.strip_suffix('"').unwrap_or(w),
    }
}

/// The value of a `key=value` word with surrounding quotes removed, or
/// `None` for a bare word.
pub fn param_value(word: &str) -> Option<&str> {
    let quoted_word = word.starts_with('"');
    let w = word.strip_prefix('"').unwrap_or(word);
    let (_, value) = w.split_once('=')?;
    let value = if quoted_word {
        value.strip_suffix('"').unwrap_or(value)
    } else if let Some(inner) = value.strip_prefix('"') {
        inner.strip_suffix('"').unwrap_or(inner)
    } else {
        value
    };
    Some(value)
}

/// Compares parameter names as the kernel does: `-` and `_` are equal.
fn keys_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes().zip(b.bytes()).all(|(x, y)| {
            let norm = |c: u8| if c == b'-' { b'_' } else { c };
            norm(x) == norm(y)
        })
}

fn has_value(word: &str) -> bool {
    word.strip_prefix('"').unwrap_or(word).contains('=')
}

/// Splits words at the first bare `--` into (kernel parameters, init
/// arguments).
fn split_at_init_args<'a>(words: &[&'a str]) -> (Vec<&'a str>, Vec<&'a str>) {
    match words.iter().position(|w| *w == "--") {
        Some(i) => (words[..i].to_vec(), words[i + 1..].to_vec()),
        None => (words.to_vec(), Vec::new()),
    }
}

/// Reads the running kernel's command line (normally `/proc/cmdline`),
/// without the trailing newline.
pub fn read_current_cmdline(path: &Path) -> Result<String, CmdlineError> {
    let text = std::fs::read_to_string(path).map_err(|source| CmdlineError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(text
        .trim_matches(|c: char| is_space(c) || c == '\0')
        .to_owned())
}

/// Parameters that choose what the next boot runs: its init, the target or
/// extra units systemd starts, a debug shell.
const BOOT_CHANGING_KEYS: &[&str] = &[
    "init",
    "rdinit",
    "systemd.unit",
    "rd.systemd.unit",
    "systemd.run",
    "systemd.run_success_action",
    "systemd.run_failure_action",
    "systemd.wants",
    "rd.systemd.wants",
    "systemd.mask",
    "rd.systemd.mask",
    "systemd.debug_shell",
    "rd.systemd.debug_shell",
];

/// Bare words that choose systemd's target (runlevels, rescue, emergency).
const BOOT_CHANGING_WORDS: &[&str] = &[
    "single",
    "s",
    "S",
    "1",
    "2",
    "3",
    "4",
    "5",
    "rescue",
    "emergency",
    "-b",
];

fn validate_override(arg: &str) -> Result<(), CmdlineError> {
    let invalid = |reason| CmdlineError::InvalidOverride {
        arg: arg.to_owned(),
        reason,
    };
    if arg.is_empty() {
        return Err(invalid("empty"));
    }
    if arg.chars().any(|c| c.is_control()) {
        return Err(invalid("contains control characters"));
    }
    if arg.bytes().filter(|&c| c == b'"').count() % 2 != 0 {
        return Err(invalid("unbalanced double quote"));
    }
    if split_cmdline(arg).len() != 1 || arg.starts_with(' ') || arg.ends_with(' ') {
        return Err(invalid(
            "contains unquoted whitespace; quote the value: key=\"a b\"",
        ));
    }
    // The kernel takes the quotes off before it looks for "--".
    if arg.trim_matches('"') == "--" {
        return Err(invalid("'--' (start of init arguments) cannot be appended"));
    }
    let key = param_key(arg);
    if key.is_empty() {
        return Err(invalid("empty parameter name"));
    }
    if keys_equal(key, "BOOT_IMAGE") || keys_equal(key, MARKER_KEY) || keys_equal(key, UNITS_KEY) {
        return Err(CmdlineError::ReservedOverride {
            arg: arg.to_owned(),
        });
    }
    if BOOT_CHANGING_KEYS.iter().any(|k| keys_equal(key, k))
        || (!has_value(arg) && BOOT_CHANGING_WORDS.contains(&arg))
    {
        return Err(CmdlineError::ChangesBoot {
            arg: arg.to_owned(),
        });
    }
    Ok(())
}

/// Builds the next boot's command line from the current one (see the
/// module docs for the rules), failing if it is longer than `max_len`
/// bytes (use [`DEFAULT_MAX_CMDLINE_LEN`] or the kernel's
/// [`super::bzimage::BzImageInfo::max_cmdline_len`]).
pub fn build_next_cmdline<S: AsRef<str>>(
    current: &str,
    overrides: &[S],
    marker: &BootMarker,
    max_len: usize,
) -> Result<String, CmdlineError> {
    let words = split_cmdline(current);
    let (mut kernel, init) = split_at_init_args(&words);
    kernel.retain(|w| {
        let key = param_key(w);
        !keys_equal(key, "BOOT_IMAGE")
            && !keys_equal(key, MARKER_KEY)
            && !keys_equal(key, UNITS_KEY)
    });

    for arg in overrides {
        let arg = arg.as_ref();
        validate_override(arg)?;
        let key = param_key(arg);
        if has_value(arg) {
            // key=value replaces every key / key=...; keep the first
            // position so the order of the line is preserved.
            let mut replaced = false;
            kernel.retain_mut(|w| {
                if !keys_equal(param_key(w), key) {
                    return true;
                }
                if replaced {
                    return false;
                }
                replaced = true;
                *w = arg;
                true
            });
            if !replaced {
                kernel.push(arg);
            }
        } else if !kernel
            .iter()
            .any(|w| !has_value(w) && keys_equal(param_key(w), key))
        {
            kernel.push(arg);
        }
    }

    if let Some(word) = kernel
        .iter()
        .find(|w| w.bytes().filter(|&c| c == b'"').count() % 2 != 0)
    {
        return Err(CmdlineError::UnterminatedQuote {
            word: (*word).to_owned(),
        });
    }
    let marker = marker.words();
    kernel.extend(marker.iter().map(String::as_str));
    let mut line = kernel.join(" ");
    if !init.is_empty() {
        line.push_str(" -- ");
        line.push_str(&init.join(" "));
    }
    if line.len() > max_len {
        return Err(CmdlineError::TooLong {
            len: line.len(),
            max: max_len,
        });
    }
    Ok(line)
}

/// Finds the transaction marker in a command line (the next boot's
/// `/proc/cmdline`). Only the kernel parameters (before `--`) count; if the
/// marker appears more than once the last wins, as for kernel parameters.
/// Returns `None` if there is no marker or its value is not a valid
/// transaction id.
pub fn marker_from_cmdline(cmdline: &str) -> Option<String> {
    let words = split_cmdline(cmdline);
    let (kernel, _) = split_at_init_args(&words);
    let value = kernel
        .iter()
        .rev()
        .find(|w| has_value(w) && keys_equal(param_key(w), MARKER_KEY))
        .and_then(|w| param_value(w))?;
    TransactionId::is_valid(value).then(|| value.to_owned())
}

/// The units the marker of `cmdline` names (`seamless_reboot.units=`), the
/// last such parameter winning; names that are not valid unit names are
/// left out. Empty when there is none.
pub fn units_from_cmdline(cmdline: &str) -> Vec<String> {
    let words = split_cmdline(cmdline);
    let (kernel, _) = split_at_init_args(&words);
    kernel
        .iter()
        .rev()
        .find(|w| has_value(w) && keys_equal(param_key(w), UNITS_KEY))
        .and_then(|w| param_value(w))
        .map(|list| {
            list.split(',')
                .filter(|u| is_valid_unit_name(u))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The marker of transaction `s`, restoring no unit.
    fn id(s: &str) -> BootMarker {
        BootMarker::new(TransactionId::new(s).expect("valid id"), &[]).expect("marker")
    }

    fn build(current: &str, overrides: &[&str]) -> String {
        build_next_cmdline(current, overrides, &id("t1"), DEFAULT_MAX_CMDLINE_LEN).expect("builds")
    }

    #[test]
    fn limits() {
        assert_eq!(DEFAULT_MAX_CMDLINE_LEN, 2016);
        assert_eq!(max_cmdline_len(2047), 2016);
        assert_eq!(max_cmdline_len(255), 224);
        assert_eq!(max_cmdline_len(10), 0);
        assert_eq!(max_cmdline_len(u32::MAX), COMMAND_LINE_SIZE - 1);
    }

    #[test]
    fn arguments_that_change_what_the_next_boot_runs_are_refused() {
        for arg in [
            "init=/bin/sh",
            "rdinit=/bin/sh",
            "systemd.unit=rescue.target",
            "systemd.run-success-action=reboot",
            "systemd.run=/bin/true",
            "systemd.wants=evil.service",
            "systemd.mask=seamless-reboot-hold.service",
            "systemd.debug_shell",
            "single",
            "emergency",
            "1",
        ] {
            let err =
                build_next_cmdline("root=/dev/vda", &[arg], &id("t1"), DEFAULT_MAX_CMDLINE_LEN)
                    .expect_err(arg);
            assert!(
                matches!(&err, CmdlineError::ChangesBoot { arg: a } if a == arg),
                "{arg}: {err}"
            );
            assert!(
                err.to_string()
                    .contains("would change what the next boot runs"),
                "{err}"
            );
        }
        // Ordinary parameters, and the same words as values, pass.
        assert_eq!(
            build(
                "root=/dev/vda",
                &["quiet", "loglevel=1", "console=ttyS1", "mitigations=off"]
            ),
            "root=/dev/vda quiet loglevel=1 console=ttyS1 mitigations=off seamless_reboot.transaction=t1"
        );
    }

    #[test]
    fn transaction_id_rules() {
        assert!(TransactionId::is_valid("a"));
        assert!(TransactionId::is_valid("20250101-abc-0"));
        assert!(TransactionId::is_valid(&"x".repeat(64)));
        assert!(!TransactionId::is_valid(""));
        assert!(!TransactionId::is_valid(&"x".repeat(65)));
        assert!(!TransactionId::is_valid("ABC"));
        assert!(!TransactionId::is_valid("a_b"));
        assert!(!TransactionId::is_valid("a b"));
        assert!(!TransactionId::is_valid("a=b"));
        let err = TransactionId::new("Bad").expect_err("invalid");
        assert!(err.to_string().contains("\"Bad\""), "{err}");
        assert_eq!(
            "ok-1".parse::<TransactionId>().expect("valid").as_str(),
            "ok-1"
        );
    }

    #[test]
    fn split_respects_quotes() {
        assert_eq!(
            split_cmdline("  root=/dev/vda1  ro\tquiet\n"),
            vec!["root=/dev/vda1", "ro", "quiet"]
        );
        assert_eq!(
            split_cmdline(r#"a="x y" "b=c d" e"#),
            vec![r#"a="x y""#, r#""b=c d""#, "e"]
        );
        assert_eq!(
            split_cmdline(r#"a="unterminated b c"#),
            vec![r#"a="unterminated b c"#]
        );
        assert!(split_cmdline("   ").is_empty());
    }

    #[test]
    fn keys_and_values() {
        assert_eq!(param_key("root=/dev/vda1"), "root");
        assert_eq!(param_key(r#""b=c d""#), "b");
        assert_eq!(param_key(r#""flag""#), "flag");
        assert_eq!(param_key("quiet"), "quiet");
        assert_eq!(param_value("root=/dev/vda1"), Some("/dev/vda1"));
        assert_eq!(param_value(r#"a="x y""#), Some("x y"));
        assert_eq!(param_value(r#""b=c d""#), Some("c d"));
        assert_eq!(param_value("quiet"), None);
        assert_eq!(param_value("a=b=c"), Some("b=c"));
        assert!(keys_equal("foo-bar_baz", "foo_bar-baz"));
        assert!(!keys_equal("foo", "fo"));
    }

    #[test]
    fn removes_boot_image() {
        assert_eq!(
            build("BOOT_IMAGE=/boot/vmlinuz-6.1 root=UUID=x ro quiet", &[]),
            "root=UUID=x ro quiet seamless_reboot.transaction=t1"
        );
    }

    #[test]
    fn removes_previous_markers() {
        assert_eq!(
            build(
                "ro seamless_reboot.transaction=old quiet seamless-reboot.transaction=older",
                &[]
            ),
            "ro quiet seamless_reboot.transaction=t1"
        );
    }

    #[test]
    fn key_value_override_replaces_all_occurrences_in_place() {
        assert_eq!(
            build(
                "console=tty0 ro console=ttyS0 quiet",
                &["console=ttyS1,115200"]
            ),
            "console=ttyS1,115200 ro quiet seamless_reboot.transaction=t1"
        );
    }

    #[test]
    fn key_value_override_matches_dash_underscore_and_bare() {
        assert_eq!(
            build(
                "ro nvme_core.io-timeout=30 debug",
                &["nvme-core.io_timeout=60", "debug=1"]
            ),
            "ro nvme-core.io_timeout=60 debug=1 seamless_reboot.transaction=t1"
        );
    }

    #[test]
    fn key_value_override_is_appended_when_new() {
        assert_eq!(
            build("ro", &["loglevel=7"]),
            "ro loglevel=7 seamless_reboot.transaction=t1"
        );
    }

    #[test]
    fn bare_flag_added_once() {
        assert_eq!(
            build("ro quiet", &["quiet", "nosplash", "nosplash"]),
            "ro quiet nosplash seamless_reboot.transaction=t1"
        );
    }

    #[test]
    fn quoted_override_values() {
        assert_eq!(
            build(r#"ro dyndbg="file a.c +p""#, &[r#"dyndbg="file b.c +p""#]),
            r#"ro dyndbg="file b.c +p" seamless_reboot.transaction=t1"#
        );
    }

    #[test]
    fn init_arguments_are_kept_and_marker_goes_before_them() {
        assert_eq!(
            build(
                "BOOT_IMAGE=/vmlinuz ro -- --init-flag console=keep BOOT_IMAGE=init-sees-this",
                &["console=ttyS0"]
            ),
            "ro console=ttyS0 seamless_reboot.transaction=t1 -- --init-flag console=keep \
             BOOT_IMAGE=init-sees-this"
        );
    }

    #[test]
    fn empty_current_cmdline() {
        assert_eq!(build("", &[]), "seamless_reboot.transaction=t1");
    }

    #[test]
    fn rejects_bad_overrides() {
        for bad in ["", "a b", "x=\"unbalanced", "--", "=v", "tab\there"] {
            let err =
                build_next_cmdline("ro", &[bad], &id("t"), DEFAULT_MAX_CMDLINE_LEN).expect_err(bad);
            assert!(
                matches!(err, CmdlineError::InvalidOverride { .. }),
                "{bad}: {err}"
            );
        }
        for reserved in [
            "BOOT_IMAGE=/x",
            "seamless_reboot.transaction=x",
            "seamless-reboot.transaction",
        ] {
            let err = build_next_cmdline("ro", &[reserved], &id("t"), DEFAULT_MAX_CMDLINE_LEN)
                .expect_err(reserved);
            assert!(
                matches!(err, CmdlineError::ReservedOverride { .. }),
                "{reserved}: {err}"
            );
        }
    }

    #[test]
    fn enforces_length_limit() {
        let marker_len = "seamless_reboot.transaction=t1".len();
        // Exactly at the limit: fine.
        let filler = "x".repeat(DEFAULT_MAX_CMDLINE_LEN - marker_len - 1);
        let line = build(&filler, &[]);
        assert_eq!(line.len(), DEFAULT_MAX_CMDLINE_LEN);
        // One more byte: refused with a clear message.
        let filler = "x".repeat(DEFAULT_MAX_CMDLINE_LEN - marker_len);
        let err = build_next_cmdline(&filler, &[] as &[&str], &id("t1"), DEFAULT_MAX_CMDLINE_LEN)
            .expect_err("too long");
        match &err {
            CmdlineError::TooLong { len, max } => {
                assert_eq!(*len, DEFAULT_MAX_CMDLINE_LEN + 1);
                assert_eq!(*max, 2016);
            }
            other => panic!("unexpected {other}"),
        }
        assert!(err.to_string().contains("COMMAND_LINE_SIZE 2048"), "{err}");
    }

    #[test]
    fn marker_round_trip_and_parsing() {
        let line = build_next_cmdline(
            "BOOT_IMAGE=/x ro",
            &[] as &[&str],
            &id("2025-06-01-abc"),
            DEFAULT_MAX_CMDLINE_LEN,
        )
        .expect("builds");
        assert_eq!(
            marker_from_cmdline(&line).as_deref(),
            Some("2025-06-01-abc")
        );
        assert_eq!(marker_from_cmdline("ro quiet"), None);
        assert_eq!(marker_from_cmdline("seamless_reboot.transaction"), None);
        assert_eq!(marker_from_cmdline("seamless_reboot.transaction=BAD"), None);
        assert_eq!(marker_from_cmdline("seamless_reboot.transaction="), None);
        assert_eq!(
            marker_from_cmdline(r#"seamless_reboot.transaction="q-1""#).as_deref(),
            Some("q-1")
        );
        assert_eq!(
            marker_from_cmdline("seamless_reboot.transaction=a seamless-reboot.transaction=b")
                .as_deref(),
            Some("b")
        );
        // After "--" it belongs to init, not to the kernel.
        assert_eq!(
            marker_from_cmdline("ro -- seamless_reboot.transaction=a"),
            None
        );
    }

    #[test]
    fn units_round_trip_and_an_old_list_is_replaced() {
        let units = vec![
            "nginx.service".to_string(),
            "getty@tty1.service".to_string(),
            "a\\x2db.service".to_string(),
        ];
        let marker =
            BootMarker::new(TransactionId::new("t1").expect("id"), &units).expect("marker");
        let line = build_next_cmdline(
            "ro seamless_reboot.units=old.service",
            &[] as &[&str],
            &marker,
            DEFAULT_MAX_CMDLINE_LEN,
        )
        .expect("builds");
        assert_eq!(
            line,
            "ro seamless_reboot.transaction=t1 \
             seamless_reboot.units=nginx.service,getty@tty1.service,a\\x2db.service"
        );
        assert_eq!(units_from_cmdline(&line), units);
        assert_eq!(units_from_cmdline("ro quiet"), Vec::<String>::new());
        // A name systemd would refuse is left out, not trusted.
        assert_eq!(
            units_from_cmdline("seamless_reboot.units=a.service,../x,b"),
            vec!["a.service".to_string()]
        );
        let err = BootMarker::new(
            TransactionId::new("t1").expect("id"),
            &["a b.service".into()],
        )
        .expect_err("refused");
        assert!(matches!(err, CmdlineError::InvalidUnitName { .. }), "{err}");
        let err = build_next_cmdline(
            "ro",
            &["seamless-reboot.units=x.service"],
            &id("t1"),
            DEFAULT_MAX_CMDLINE_LEN,
        )
        .expect_err("reserved");
        assert!(
            matches!(err, CmdlineError::ReservedOverride { .. }),
            "{err}"
        );
    }

    #[test]
    fn reads_current_cmdline_from_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cmdline");
        std::fs::write(&path, "BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro\n").expect("write");
        assert_eq!(
            read_current_cmdline(&path).expect("reads"),
            "BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro"
        );
        let err = read_current_cmdline(&dir.path().join("missing")).expect_err("missing");
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
