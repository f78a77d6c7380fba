//! Property tests of the configuration parser.
//!
//! The configuration is the one input an operator types by hand, so the
//! parser must answer every text with a configuration or a located error,
//! never a panic; and the crate's own printer (`Config::to_toml_string`,
//! which tools use to show and install configurations) must print every
//! valid configuration as a document that loads back to the same value.
//! The example tests pin the messages; these properties cover the inputs
//! nobody thought to write down. The case counts keep the whole file to a
//! few seconds in a debug build.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use seamless_reboot_config::{
    Config, HoldMode, Kernel, MAX_TIMEOUT_S, MIN_TIMEOUT_S, Network, Timeouts, UnitPolicy,
};

/// Runner settings: `cases` per property, and no failure files written
/// into the source tree (a failure prints its minimal input instead).
fn runner(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn path() -> &'static Path {
    Path::new("/prop/config.toml")
}

/// Service unit names as the parser accepts them: systemd's character set,
/// no leading dot, optionally a template instance.
fn unit_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9:_\\\\-][a-zA-Z0-9:_.\\\\-]{0,20}(@[a-zA-Z0-9:_.\\\\@-]{1,10})?\\.service"
}

fn policy() -> impl Strategy<Value = UnitPolicy> {
    prop_oneof![
        Just(UnitPolicy::Preserve),
        Just(UnitPolicy::Restart),
        Just(UnitPolicy::Skip),
    ]
}

fn timeout() -> impl Strategy<Value = u32> {
    MIN_TIMEOUT_S..=MAX_TIMEOUT_S
}

/// Every configuration the parser can produce: any absolute path (control
/// characters and all, as TOML can escape them), valid unit names without
/// duplicates, timeouts in range, kernel arguments without control
/// characters.
fn valid_config() -> impl Strategy<Value = Config> {
    (
        prop::collection::vec(unit_name(), 0..5),
        any::<String>(),
        (timeout(), timeout(), timeout()),
        (
            prop_oneof![Just(HoldMode::Drop), Just(HoldMode::Queue)],
            any::<bool>(),
        ),
        prop::collection::vec("[^\\p{Cc}]{1,16}", 0..5),
        prop::collection::btree_map(unit_name(), policy(), 0..4),
    )
        .prop_map(
            |(mut units, dir, (checkpoint_s, restore_s, kexec_s), (hold, dws), append, policy)| {
                let mut seen = std::collections::HashSet::new();
                units.retain(|u| seen.insert(u.clone()));
                Config {
                    units,
                    image_dir: PathBuf::from(format!("/{dir}")),
                    // Any string survives the round trip; the generated
                    // directory name doubles as a filesystem name.
                    image_dir_forbidden_filesystems: vec![dir.clone()],
                    timeouts: Timeouts {
                        checkpoint_s,
                        restore_s,
                        kexec_s,
                    },
                    network: Network {
                        hold,
                        disable_window_scaling_during_restore: dws,
                    },
                    kernel: Kernel { append },
                    policy: policy.into_iter().collect::<BTreeMap<_, _>>(),
                }
            },
        )
}

/// A TOML value: mostly plausible ones, some of the wrong type, some out of
/// range, some not TOML at all.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        (-5_i64..4000).prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("0x7fffffffffffffff".to_owned()),
        Just("99999999999999999999".to_owned()),
        Just("1_000".to_owned()),
        Just("1.5".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        Just("\"drop\"".to_owned()),
        Just("\"queue\"".to_owned()),
        Just("\"restart\"".to_owned()),
        Just("\"/srv/images\"".to_owned()),
        Just("\"relative\"".to_owned()),
        Just("[]".to_owned()),
        Just("[\"a.service\", \"a.service\"]".to_owned()),
        Just("[\"quiet\", \"\"]".to_owned()),
        Just("{ hold = \"drop\" }".to_owned()),
        Just("1979-05-27T07:32:00Z".to_owned()),
        unit_name().prop_map(|u| format!("[{u:?}]")),
        any::<String>().prop_map(|s| format!("{s:?}")),
        "[ -~]{0,12}",
    ]
}

fn toml_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("units".to_owned()),
        Just("image_dir".to_owned()),
        Just("checkpoint_s".to_owned()),
        Just("restore_s".to_owned()),
        Just("kexec_s".to_owned()),
        Just("hold".to_owned()),
        Just("disable_window_scaling_during_restore".to_owned()),
        Just("append".to_owned()),
        Just("timeouts.kexec_s".to_owned()),
        Just("network.hold".to_owned()),
        Just("kernel.append".to_owned()),
        unit_name().prop_map(|u| format!("{u:?}")),
        "[a-z_.\"-]{1,12}",
    ]
}

/// One line of a TOML-ish document.
fn toml_line() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (toml_key(), toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
        2 => prop_oneof![
            Just("[timeouts]".to_owned()),
            Just("[network]".to_owned()),
            Just("[kernel]".to_owned()),
            Just("[policy]".to_owned()),
            Just("[[units]]".to_owned()),
            Just("[timeouts".to_owned()),
            "\\[[a-z.]{1,10}\\]",
        ],
        1 => Just(String::new()),
        1 => Just("# comment".to_owned()),
        1 => "[ -~]{0,20}",
    ]
}

fn toml_document() -> impl Strategy<Value = String> {
    prop::collection::vec(toml_line(), 0..12).prop_map(|lines| lines.join("\n"))
}

/// What every successfully parsed configuration satisfies; each failure
/// names the broken rule.
fn check_invariants(c: &Config) -> Result<(), TestCaseError> {
    for t in [
        c.timeouts.checkpoint_s,
        c.timeouts.restore_s,
        c.timeouts.kexec_s,
    ] {
        prop_assert!((MIN_TIMEOUT_S..=MAX_TIMEOUT_S).contains(&t), "timeout {t}");
    }
    prop_assert!(c.image_dir.is_absolute(), "image_dir {:?}", c.image_dir);
    let mut seen = std::collections::HashSet::new();
    for u in &c.units {
        prop_assert!(u.ends_with(".service"), "unit {u:?}");
        prop_assert!(seen.insert(u), "duplicate unit {u:?}");
    }
    for u in c.policy.keys() {
        prop_assert!(u.ends_with(".service"), "policy unit {u:?}");
    }
    for a in &c.kernel.append {
        prop_assert!(
            !a.is_empty() && !a.chars().any(char::is_control),
            "arg {a:?}"
        );
    }
    Ok(())
}

/// An error's line, if it has one, lies inside the text (or on the line
/// after a final newline, where "unexpected end" is reported).
fn check_error_line(
    text: &str,
    e: &seamless_reboot_config::ConfigError,
) -> Result<(), TestCaseError> {
    if let Some(at) = e.location() {
        let lines = text.split('\n').count();
        prop_assert!(
            (1..=lines).contains(&at.line),
            "error at line {} of a {lines}-line text: {e}",
            at.line
        );
        prop_assert_eq!(at.path.as_path(), path());
    }
    Ok(())
}

proptest! {
    #![proptest_config(runner(2000))]

    /// Any text at all: a configuration or a located error, no panic.
    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        match Config::from_toml_str(&text, path()) {
            Ok(c) => check_invariants(&c)?,
            Err(e) => check_error_line(&text, &e)?,
        }
    }
}

proptest! {
    #![proptest_config(runner(2000))]

    /// Documents built from the schema's own keys and tables with values of
    /// every type: no panic; what parses keeps every invariant and prints
    /// back to the same configuration; what fails names a line of the text.
    #[test]
    fn toml_like_documents_parse_or_fail_cleanly(text in toml_document()) {
        match Config::from_toml_str(&text, path()) {
            Ok(c) => {
                check_invariants(&c)?;
                let printed = c.to_toml_string();
                let back = Config::from_toml_str(&printed, path());
                prop_assert!(back.is_ok(), "printed form does not load: {:?}\n{}", back, printed);
                if let Ok(back) = back {
                    prop_assert_eq!(back, c);
                }
            }
            Err(e) => check_error_line(&text, &e)?,
        }
    }
}

proptest! {
    #![proptest_config(runner(1000))]

    /// The printer's output loads back to the same value, for every valid
    /// configuration, and is the `Display` form too.
    #[test]
    fn valid_config_round_trips_through_to_toml_string(c in valid_config()) {
        let text = c.to_toml_string();
        prop_assert_eq!(&c.to_string(), &text);
        match Config::from_toml_str(&text, path()) {
            Ok(back) => prop_assert_eq!(back, c),
            Err(e) => prop_assert!(false, "own output does not load: {e}\n{text}"),
        }
    }
}

proptest! {
    #![proptest_config(runner(500))]

    /// A timeout outside the allowed range is refused with a located error,
    /// whichever of the three it is and however the number is written.
    #[test]
    fn out_of_range_timeouts_are_errors(
        key in prop_oneof![Just("checkpoint_s"), Just("restore_s"), Just("kexec_s")],
        n in prop_oneof![i64::MIN..i64::from(MIN_TIMEOUT_S), i64::from(MAX_TIMEOUT_S) + 1..=i64::MAX],
        hex in any::<bool>(),
    ) {
        let value = if hex && n >= 0 { format!("0x{n:x}") } else { n.to_string() };
        let text = format!("[timeouts]\n{key} = {value}\n");
        match Config::from_toml_str(&text, path()) {
            Ok(c) => prop_assert!(false, "accepted {text:?} as {c:?}"),
            Err(e) => {
                prop_assert_eq!(e.location().map(|l| l.line), Some(2), "{}", e);
                prop_assert!(e.to_string().contains(key), "{}", e);
            }
        }
    }
}
