//! The request → (NOTIFY ↔ ack)* → final response exchange.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use prost::Message;

use super::error::CriuError;
use super::rpc::{CriuReq, CriuReqType, CriuResp};
use super::transport::Transport;

/// Hook names CRIU sends in NOTIFY responses (`criu/action-scripts.c`).
pub mod scripts {
    /// Before image streaming starts.
    pub const PRE_STREAM: &str = "pre-stream";
    /// Before dumping starts.
    pub const PRE_DUMP: &str = "pre-dump";
    /// Dump finished; the tasks are still frozen (or killed afterwards).
    pub const POST_DUMP: &str = "post-dump";
    /// Before restoring starts.
    pub const PRE_RESTORE: &str = "pre-restore";
    /// Tasks restored but not resumed yet; carries the root pid.
    pub const POST_RESTORE: &str = "post-restore";
    /// Lock the network (only for trees with their own netns).
    pub const NETWORK_LOCK: &str = "network-lock";
    /// Unlock the network (only for trees with their own netns).
    pub const NETWORK_UNLOCK: &str = "network-unlock";
    /// Root task created with its namespaces; carries the root pid.
    pub const SETUP_NAMESPACES: &str = "setup-namespaces";
    /// Namespaces configured.
    pub const POST_SETUP_NAMESPACES: &str = "post-setup-namespaces";
    /// Right before the tasks are resumed.
    pub const PRE_RESUME: &str = "pre-resume";
    /// Tasks resumed; CRIU ignores a failure of this hook.
    pub const POST_RESUME: &str = "post-resume";
    /// A pty master was opened (the fd rides along; this client closes it).
    pub const ORPHAN_PTS_MASTER: &str = "orphan-pts-master";
    /// CRIU is ready (service/page-server modes).
    pub const STATUS_READY: &str = "status-ready";
    /// CRIU asks for extra external files.
    pub const QUERY_EXT_FILES: &str = "query-ext-files";
}

/// One NOTIFY callback from CRIU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notification<'a> {
    /// The hook name, one of [`scripts`].
    pub script: &'a str,
    /// The restored root task's pid; CRIU only sends it with
    /// `setup-namespaces` and `post-restore`.
    pub pid: Option<i32>,
}

/// The callback answering NOTIFY messages: `Ok` lets CRIU continue, `Err`
/// makes the hook fail (CRIU then usually aborts the request).
pub type NotifyFn<'f> = dyn FnMut(Notification<'_>) -> anyhow::Result<()> + 'f;

/// Sends `request` over `transport` and drives the exchange to the final
/// response.
///
/// Every NOTIFY response is passed to `notify` and answered with a NOTIFY
/// request whose `notify_success` is the callback's outcome. The final
/// response must have the request's type and `success = true`; otherwise
/// the matching [`CriuError`] is returned (`log_file` is only used to point
/// at CRIU's log in [`CriuError::Failed`]).
///
/// If a callback failed, the error is [`CriuError::NotifyFailed`], holding
/// CRIU's own subsequent failure. If CRIU carries on and still reports
/// success (it ignores failures of some hooks, e.g. `post-resume`), the
/// response is returned and only a warning is logged: the callback has to
/// remember its own failure.
///
/// When `timeout` passes first, [`Transport::abort`] is called and
/// [`CriuError::Timeout`] returned.
pub fn exchange<T: Transport + ?Sized>(
    transport: &mut T,
    request: &CriuReq,
    timeout: Option<Duration>,
    notify: &mut NotifyFn<'_>,
    log_file: Option<&Path>,
) -> Result<CriuResp, CriuError> {
    let kind = CriuReqType::try_from(request.r#type).map_err(|_| {
        CriuError::InvalidOptions(format!("unknown request type {}", request.r#type))
    })?;
    let deadline = timeout.map(|t| Instant::now() + t);
    tracing::debug!(request = kind.as_str_name(), "sending request to criu");
    send(transport, &request.encode_to_vec(), kind)?;

    let mut rejected: Option<(String, anyhow::Error)> = None;
    loop {
        let packet = match transport.recv(deadline) {
            Ok(Some(packet)) => packet,
            Ok(None) => {
                let status = transport.peer_exit_status();
                let closed = CriuError::Closed {
                    request: kind,
                    status,
                };
                return Err(with_rejection(rejected, closed));
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                transport.abort();
                let timeout = timeout.unwrap_or_default();
                return Err(with_rejection(
                    rejected,
                    CriuError::Timeout {
                        request: kind,
                        timeout,
                    },
                ));
            }
            Err(source) => {
                return Err(CriuError::Io {
                    context: "receiving from criu",
                    source,
                });
            }
        };
        let response = CriuResp::decode(packet.as_slice())?;

        if response.r#type == CriuReqType::Notify as i32 {
            let Some(n) = response.notify.as_ref() else {
                return Err(CriuError::Protocol(
                    "NOTIFY response without its notify field".into(),
                ));
            };
            let script = n.script.as_deref().unwrap_or_default();
            tracing::debug!(script, pid = ?n.pid, "criu notification");
            let outcome = notify(Notification { script, pid: n.pid });
            let ok = outcome.is_ok();
            if let Err(e) = outcome {
                tracing::warn!(script, error = %format!("{e:#}"), "notification handler failed; telling criu");
                if rejected.is_none() {
                    rejected = Some((script.to_owned(), e));
                }
            }
            let ack = CriuReq {
                r#type: CriuReqType::Notify as i32,
                notify_success: Some(ok),
                ..CriuReq::default()
            };
            send(transport, &ack.encode_to_vec(), kind)?;
            continue;
        }

        let result = final_response(kind, response, log_file);
        return match (rejected, result) {
            (Some((script, source)), Ok(response)) => {
                tracing::warn!(
                    script,
                    error = %format!("{source:#}"),
                    "criu reported success although a notification handler failed"
                );
                Ok(response)
            }
            (Some((script, source)), Err(e)) => Err(CriuError::NotifyFailed {
                script,
                source,
                criu: Some(Box::new(e)),
            }),
            (None, result) => result,
        };
    }
}

fn send<T: Transport + ?Sized>(
    transport: &mut T,
    packet: &[u8],
    kind: CriuReqType,
) -> Result<(), CriuError> {
    match transport.send(packet) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::NotConnected
            ) =>
        {
            Err(CriuError::Closed {
                request: kind,
                status: transport.peer_exit_status(),
            })
        }
        Err(source) => Err(CriuError::Io {
            context: "sending to criu",
            source,
        }),
    }
}

fn with_rejection(rejected: Option<(String, anyhow::Error)>, error: CriuError) -> CriuError {
    match rejected {
        Some((script, source)) => CriuError::NotifyFailed {
            script,
            source,
            criu: Some(Box::new(error)),
        },
        None => error,
    }
}

fn final_response(
    kind: CriuReqType,
    response: CriuResp,
    log_file: Option<&Path>,
) -> Result<CriuResp, CriuError> {
    let same_type = response.r#type == kind as i32;
    if same_type && response.success {
        return Ok(response);
    }
    // CRIU answers requests it cannot parse or route with type EMPTY.
    if !response.success && (same_type || response.r#type == CriuReqType::Empty as i32) {
        return Err(CriuError::Failed {
            request: kind,
            cr_errno: response.cr_errno.filter(|&e| e != 0),
            cr_errmsg: response.cr_errmsg.filter(|m| !m.is_empty()),
            log_file: log_file.map(Path::to_path_buf),
        });
    }
    Err(CriuError::UnexpectedResponse {
        request: kind,
        got: response.r#type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criu::rpc::{CriuDumpResp, CriuNotify, CriuOpts, CriuRestoreResp};
    use std::collections::VecDeque;
    use std::path::PathBuf;

    /// What the fake peer does on each `recv`.
    enum Step {
        Packet(Vec<u8>),
        Eof,
        TimedOut,
    }

    #[derive(Default)]
    struct FakeTransport {
        script: VecDeque<Step>,
        sent: Vec<CriuReq>,
        aborted: bool,
        fail_send_after: Option<usize>,
    }

    impl FakeTransport {
        fn new(steps: impl IntoIterator<Item = Step>) -> Self {
            Self {
                script: steps.into_iter().collect(),
                ..Self::default()
            }
        }
    }

    impl Transport for FakeTransport {
        fn send(&mut self, packet: &[u8]) -> io::Result<()> {
            if self.fail_send_after.is_some_and(|n| self.sent.len() >= n) {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            self.sent
                .push(CriuReq::decode(packet).expect("client sent a valid criu_req"));
            Ok(())
        }

        fn recv(&mut self, _deadline: Option<Instant>) -> io::Result<Option<Vec<u8>>> {
            match self.script.pop_front() {
                Some(Step::Packet(p)) => Ok(Some(p)),
                Some(Step::Eof) | None => Ok(None),
                Some(Step::TimedOut) => Err(io::ErrorKind::TimedOut.into()),
            }
        }

        fn abort(&mut self) {
            self.aborted = true;
        }
    }

    fn packet(resp: CriuResp) -> Step {
        Step::Packet(resp.encode_to_vec())
    }

    fn notify(script: &str, pid: Option<i32>) -> Step {
        packet(CriuResp {
            r#type: CriuReqType::Notify as i32,
            success: true,
            notify: Some(CriuNotify {
                script: Some(script.into()),
                pid,
            }),
            ..CriuResp::default()
        })
    }

    fn dump_ok() -> Step {
        packet(CriuResp {
            r#type: CriuReqType::Dump as i32,
            success: true,
            dump: Some(CriuDumpResp {
                restored: Some(false),
            }),
            ..CriuResp::default()
        })
    }

    fn dump_request() -> CriuReq {
        CriuReq {
            r#type: CriuReqType::Dump as i32,
            opts: Some(CriuOpts {
                images_dir_fd: 7,
                pid: Some(1234),
                notify_scripts: Some(true),
                ..CriuOpts::default()
            }),
            ..CriuReq::default()
        }
    }

    fn accept_all(
        seen: &mut Vec<(String, Option<i32>)>,
    ) -> impl FnMut(Notification<'_>) -> anyhow::Result<()> + '_ {
        |n| {
            seen.push((n.script.to_owned(), n.pid));
            Ok(())
        }
    }

    #[test]
    fn notifications_are_acked_and_final_response_returned() {
        let mut t = FakeTransport::new([
            notify(scripts::NETWORK_LOCK, None),
            notify(scripts::POST_DUMP, None),
            dump_ok(),
        ]);
        let mut seen = Vec::new();
        let resp = exchange(
            &mut t,
            &dump_request(),
            None,
            &mut accept_all(&mut seen),
            None,
        )
        .expect("dump succeeds");
        assert_eq!(resp.r#type, CriuReqType::Dump as i32);
        assert_eq!(
            seen,
            vec![
                ("network-lock".to_owned(), None),
                ("post-dump".to_owned(), None)
            ]
        );
        // The request itself, then one ack per notification.
        assert_eq!(t.sent.len(), 3);
        assert_eq!(t.sent[0], dump_request());
        for ack in &t.sent[1..] {
            assert_eq!(ack.r#type, CriuReqType::Notify as i32);
            assert_eq!(ack.notify_success, Some(true));
            assert!(ack.opts.is_none());
        }
    }

    #[test]
    fn notification_pid_is_passed_through() {
        let restore_ok = packet(CriuResp {
            r#type: CriuReqType::Restore as i32,
            success: true,
            restore: Some(CriuRestoreResp { pid: 4321 }),
            ..CriuResp::default()
        });
        let mut t = FakeTransport::new([notify(scripts::POST_RESTORE, Some(4321)), restore_ok]);
        let req = CriuReq {
            r#type: CriuReqType::Restore as i32,
            opts: Some(CriuOpts::default()),
            ..CriuReq::default()
        };
        let mut seen = Vec::new();
        let resp = exchange(&mut t, &req, None, &mut accept_all(&mut seen), None).expect("restore");
        assert_eq!(resp.restore.map(|r| r.pid), Some(4321));
        assert_eq!(seen, vec![("post-restore".to_owned(), Some(4321))]);
    }

    #[test]
    fn failing_callback_is_reported_to_criu_and_caller() {
        let dump_failed = packet(CriuResp {
            r#type: CriuReqType::Dump as i32,
            success: false,
            cr_errmsg: Some("One of more action scripts failed".into()),
            ..CriuResp::default()
        });
        let mut t = FakeTransport::new([notify(scripts::NETWORK_LOCK, None), dump_failed]);
        let mut cb = |_: Notification<'_>| anyhow::bail!("nft said no");
        let err = exchange(&mut t, &dump_request(), None, &mut cb, None).expect_err("must fail");
        assert_eq!(t.sent[1].notify_success, Some(false));
        match &err {
            CriuError::NotifyFailed {
                script,
                source,
                criu,
            } => {
                assert_eq!(script, "network-lock");
                assert_eq!(source.to_string(), "nft said no");
                assert!(matches!(criu.as_deref(), Some(CriuError::Failed { .. })));
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert_eq!(err.request(), Some(CriuReqType::Dump));
        let text = err.to_string();
        assert!(text.contains("nft said no"), "{text}");
        assert!(text.contains("action scripts failed"), "{text}");
    }

    #[test]
    fn failing_callback_but_criu_success_returns_response() {
        let mut t = FakeTransport::new([notify(scripts::POST_RESUME, None), dump_ok()]);
        let mut cb = |_: Notification<'_>| anyhow::bail!("ignored by criu");
        let resp = exchange(&mut t, &dump_request(), None, &mut cb, None).expect("success wins");
        assert!(resp.success);
        assert_eq!(t.sent[1].notify_success, Some(false));
    }

    #[test]
    fn failure_carries_errno_errmsg_and_log_path() {
        let failed = packet(CriuResp {
            r#type: CriuReqType::Dump as i32,
            success: false,
            cr_errno: Some(libc::ESRCH),
            cr_errmsg: Some("Can't stop 1234\n".into()),
            ..CriuResp::default()
        });
        let mut t = FakeTransport::new([failed]);
        let log = PathBuf::from("/var/lib/x/images/dump.log");
        let err = exchange(
            &mut t,
            &dump_request(),
            None,
            &mut |_: Notification<'_>| Ok(()),
            Some(&log),
        )
        .expect_err("must fail");
        match &err {
            CriuError::Failed {
                request,
                cr_errno,
                cr_errmsg,
                log_file,
            } => {
                assert_eq!(*request, CriuReqType::Dump);
                assert_eq!(*cr_errno, Some(libc::ESRCH));
                assert_eq!(cr_errmsg.as_deref(), Some("Can't stop 1234\n"));
                assert_eq!(log_file.as_deref(), Some(log.as_path()));
            }
            other => panic!("unexpected error {other:?}"),
        }
        let text = err.to_string();
        assert!(text.starts_with("criu DUMP failed (errno 3"), "{text}");
        assert!(
            text.contains(": Can't stop 1234; see /var/lib/x/images/dump.log"),
            "{text}"
        );
    }

    #[test]
    fn zero_errno_and_empty_message_are_dropped() {
        let failed = packet(CriuResp {
            r#type: CriuReqType::Dump as i32,
            success: false,
            cr_errno: Some(0),
            cr_errmsg: Some(String::new()),
            ..CriuResp::default()
        });
        let mut t = FakeTransport::new([failed]);
        let err = exchange(
            &mut t,
            &dump_request(),
            None,
            &mut |_: Notification<'_>| Ok(()),
            None,
        )
        .expect_err("must fail");
        assert!(matches!(
            err,
            CriuError::Failed {
                cr_errno: None,
                cr_errmsg: None,
                log_file: None,
                ..
            }
        ));
        assert_eq!(err.to_string(), "criu DUMP failed");
    }

    #[test]
    fn empty_type_failure_is_a_failure() {
        let failed = packet(CriuResp {
            r#type: CriuReqType::Empty as i32,
            success: false,
            cr_errmsg: Some("Invalid req".into()),
            ..CriuResp::default()
        });
        let mut t = FakeTransport::new([failed]);
        let err = exchange(
            &mut t,
            &dump_request(),
            None,
            &mut |_: Notification<'_>| Ok(()),
            None,
        )
        .expect_err("must fail");
        assert!(matches!(
            err,
            CriuError::Failed {
                request: CriuReqType::Dump,
                ..
            }
        ));
    }

    #[test]
    fn wrong_response_type_is_rejected() {
        let wrong = packet(CriuResp {
            r#type: CriuReqType::Restore as i32,
            success: true,
            ..CriuResp::default()
        });
        let mut t = FakeTransport::new([wrong]);
        let err = exchange(
            &mut t,
            &dump_request(),
            None,
            &mut |_: Notification<'_>| Ok(()),
            None,
        )
        .expect_err("must fail");
        assert!(matches!(
            err,
            CriuError::UnexpectedResponse {
                request: CriuReqType::Dump,
                got: 2
            }
        ));
        assert_eq!(
            err.to_string(),
            "criu answered the DUMP request with a response of type RESTORE"
        );
    }

    #[test]
    fn eof_before_response_is_closed() {
        let mut t = FakeTransport::new([notify(scripts::PRE_DUMP, None), Step::Eof]);
        let err = exchange(
            &mut t,
            &dump_request(),
            None,
            &mut |_: Notification<'_>| Ok(()),
            None,
        )
        .expect_err("must fail");
        assert!(matches!(
            err,
            CriuError::Closed {
                request: CriuReqType::Dump,
                status: None
            }
        ));
        assert!(err.to_string().contains("exit status unknown"));
    }

    #[test]
    fn broken_pipe_on_send_is_closed() {
        let mut t = FakeTransport::new([dump_ok()]);
        t.fail_send_after = Some(0);
        let err = exchange(
            &mut t,
            &dump_request(),
            None,
            &mut |_: Notification<'_>| Ok(()),
            None,
        )
        .expect_err("must fail");
        assert!(matches!(err, CriuError::Closed { .. }));
    }

    #[test]
    fn timeout_aborts_the_peer() {
        let mut t = FakeTransport::new([Step::TimedOut]);
        let err = exchange(
            &mut t,
            &dump_request(),
            Some(Duration::from_secs(3)),
            &mut |_: Notification<'_>| Ok(()),
            None,
        )
        .expect_err("must fail");
        assert!(t.aborted);
        assert!(matches!(
            err,
            CriuError::Timeout {
                request: CriuReqType::Dump,
                timeout
            } if timeout == Duration::from_secs(3)
        ));
    }

    #[test]
    fn garbage_and_notify_without_body_are_errors() {
        let mut t = FakeTransport::new([Step::Packet(vec![0xff, 0xff, 0xff])]);
        let err = exchange(
            &mut t,
            &dump_request(),
            None,
            &mut |_: Notification<'_>| Ok(()),
            None,
        )
        .expect_err("must fail");
        assert!(matches!(err, CriuError::Decode(_)));

        let bare = packet(CriuResp {
            r#type: CriuReqType::Notify as i32,
            success: true,
            ..CriuResp::default()
        });
        let mut t = FakeTransport::new([bare]);
        let err = exchange(
            &mut t,
            &dump_request(),
            None,
            &mut |_: Notification<'_>| Ok(()),
            None,
        )
        .expect_err("must fail");
        assert!(matches!(err, CriuError::Protocol(_)));
    }

    #[test]
    fn unknown_request_type_is_refused_before_sending() {
        let mut t = FakeTransport::new([]);
        let req = CriuReq {
            r#type: 99,
            ..CriuReq::default()
        };
        let err = exchange(&mut t, &req, None, &mut |_: Notification<'_>| Ok(()), None)
            .expect_err("must fail");
        assert!(matches!(err, CriuError::InvalidOptions(_)));
        assert!(t.sent.is_empty());
    }
}
