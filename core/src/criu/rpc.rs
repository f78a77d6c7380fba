//! Message types of CRIU's RPC protocol, generated at build time by
//! `prost-build` from `core/proto/rpc.proto` (CRIU v4.1.1 `images/rpc.proto`,
//! MIT licence, see `core/proto/LICENSE`).
//!
//! The proto file has no `package`, so the names are top-level: [`CriuReq`],
//! [`CriuResp`], [`CriuOpts`], [`CriuReqType`], ... Proto2 `required` fields
//! are plain fields, `optional` ones are `Option`s, and enum fields are
//! `i32`s with typed accessors (`r#type()`, `set_network_lock()`, ...).

// Generated code: exempt it from the workspace's documentation and style lints.
#![allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]

include!(concat!(env!("OUT_DIR"), "/_.rs"));

impl std::fmt::Display for CriuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major_number, self.minor_number)?;
        if let Some(sublevel) = self.sublevel {
            write!(f, ".{sublevel}")?;
        }
        if let Some(extra) = self.extra {
            write!(f, ".{extra}")?;
        }
        if let Some(name) = self.name.as_deref().filter(|n| !n.is_empty()) {
            write!(f, " ({name})")?;
        }
        if let Some(gitid) = self.gitid.as_deref().filter(|g| !g.is_empty()) {
            write!(f, " [{gitid}]")?;
        }
        Ok(())
    }
}
