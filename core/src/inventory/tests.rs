#![allow(clippy::unwrap_used)]

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::symlink;
use std::path::Path;

use super::procnet::{self, Family};
use super::*;

const TCP_HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
const TCP6_HEADER: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
const UNIX_HEADER: &str = "Num       RefCount Protocol Flags    Type St Inode Path\n";

/// `ADDR:PORT` as the kernel prints it on this machine (see `procnet`).
fn hex_addr(addr: SocketAddr) -> String {
    let words: Vec<u32> = match addr.ip() {
        IpAddr::V4(ip) => vec![u32::from_ne_bytes(ip.octets())],
        IpAddr::V6(ip) => ip
            .octets()
            .chunks_exact(4)
            .map(|c| u32::from_ne_bytes(c.try_into().unwrap()))
            .collect(),
    };
    let hex: String = words.iter().map(|w| format!("{w:08X}")).collect();
    format!("{hex}:{:04X}", addr.port())
}

fn tcp_line(sl: usize, local: &str, remote: &str, state: u8, inode: u64) -> String {
    format!(
        "{sl:4}: {} {} {state:02X} 00000000:00000000 00:00000000 00000000  1000        0 {inode} 1 0000000000000000 20 4 30 10 -1\n",
        hex_addr(local.parse().unwrap()),
        hex_addr(remote.parse().unwrap()),
    )
}

fn write(path: &Path, content: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

fn fd_link(root: &Path, pid: i32, fd: u32, target: &str) {
    let dir = root.join(format!("proc/{pid}/fd"));
    fs::create_dir_all(&dir).unwrap();
    symlink(target, dir.join(fd.to_string())).unwrap();
}

fn netns_link(root: &Path, pid: i32, target: &str) {
    let dir = root.join(format!("proc/{pid}/ns"));
    fs::create_dir_all(&dir).unwrap();
    symlink(target, dir.join("net")).unwrap();
}

/// A fake tree: `demo.service` with pid 100 (main) and pid 101 in a
/// sub-cgroup, sharing a network namespace whose tables are under pid 100.
fn fake_tree() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cg = root.join("sys/fs/cgroup/system.slice/demo.service");
    write(&cg.join("cgroup.procs"), "100\n");
    write(&cg.join("cgroup.threads"), "100\n102\n");
    write(&cg.join("cgroup.controllers"), "");
    write(&cg.join("worker/cgroup.procs"), "101\n");
    write(&cg.join("worker/cgroup.threads"), "101\n103\n104\n");
    write(&root.join("proc/100/stat"), "100 (demo) S 1 100 100 0 -1\n");
    write(
        &root.join("proc/101/stat"),
        "101 (demo worker) S 100 100 100 0 -1\n",
    );

    // pid 100: stdin /dev/null, stdout+stderr the journal stream, a listener
    // and an IPv4 connection accepted from it.
    fd_link(root, 100, 0, "/dev/null");
    fd_link(root, 100, 1, "socket:[5001]");
    fd_link(root, 100, 2, "socket:[5001]");
    fd_link(root, 100, 3, "socket:[6001]");
    fd_link(root, 100, 4, "socket:[6002]");
    fd_link(root, 100, 5, "anon_inode:[eventpoll]");
    netns_link(root, 100, "net:[4026531840]");
    // pid 101: the inherited listener, an IPv6 connection, a UDP socket, a
    // netlink socket (in no table) and a unix socket not on stdio.
    fd_link(root, 101, 1, "socket:[5001]");
    fd_link(root, 101, 3, "socket:[6001]");
    fd_link(root, 101, 4, "socket:[6003]");
    fd_link(root, 101, 7, "socket:[7001]");
    fd_link(root, 101, 8, "socket:[7002]");
    fd_link(root, 101, 9, "socket:[5002]");
    fd_link(root, 101, 10, "/var/log/demo.log");
    netns_link(root, 101, "net:[4026531840]");

    let mut tcp = TCP_HEADER.to_owned();
    tcp += &tcp_line(0, "0.0.0.0:8080", "0.0.0.0:0", 0x0A, 6001);
    tcp += &tcp_line(1, "192.0.2.1:8080", "198.51.100.7:51000", 0x01, 6002);
    // Another process's connection in the same namespace: not ours.
    tcp += &tcp_line(2, "192.0.2.1:22", "198.51.100.9:40000", 0x01, 6999);
    // A TIME_WAIT remnant without an inode.
    tcp += &tcp_line(3, "192.0.2.1:8080", "198.51.100.8:50000", 0x06, 0);
    write(&root.join("proc/100/net/tcp"), &tcp);

    let mut tcp6 = TCP6_HEADER.to_owned();
    tcp6 += &tcp_line(0, "[2001:db8::1]:8443", "[2001:db8::2]:40001", 0x01, 6003);
    tcp6 += &tcp_line(1, "[::]:9999", "[::]:0", 0x0A, 6998);
    write(&root.join("proc/100/net/tcp6"), &tcp6);

    write(
        &root.join("proc/100/net/udp"),
        &format!(
            "{}{}",
            "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n",
            tcp_line(0, "0.0.0.0:5353", "0.0.0.0:0", 0x07, 7001)
        ),
    );
    write(
        &root.join("proc/100/net/unix"),
        &format!(
            "{UNIX_HEADER}\
0000000000000000: 00000002 00000000 00010000 0001 01 4000 /run/systemd/journal/stdout\n\
0000000000000000: 00000003 00000000 00000000 0001 03 5000 /run/systemd/journal/stdout\n\
0000000000000000: 00000003 00000000 00000000 0001 03 5001\n\
0000000000000000: 00000002 00000000 00000000 0002 01 5002\n"
        ),
    );
    tmp
}

#[test]
fn unit_inventory_of_fake_tree() {
    let tree = fake_tree();
    let inv = Inventory::new(tree.path())
        .unit("demo.service", "/system.slice/demo.service", 100)
        .unwrap();
    assert_eq!(inv.pids, vec![100, 101]);
    assert_eq!(inv.main_pid, 100);
    assert_eq!(
        inv.listening,
        vec!["0.0.0.0:8080".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(
        inv.established,
        vec![
            TcpConnection {
                local: "192.0.2.1:8080".parse().unwrap(),
                remote: "198.51.100.7:51000".parse().unwrap(),
            },
            TcpConnection {
                local: "[2001:db8::1]:8443".parse().unwrap(),
                remote: "[2001:db8::2]:40001".parse().unwrap(),
            },
        ]
    );
    assert_eq!(inv.stdio_socket_inodes, vec![5001]);
    assert_eq!(
        inv.other_sockets,
        SocketCounts {
            unix: 1,
            udp: 1,
            tcp_other_state: 0,
            other: 1,
        }
    );
}

#[test]
fn default_cgroup_path_of_a_system_service() {
    assert_eq!(
        unit_cgroup_path("demo.service").unwrap(),
        "/system.slice/demo.service"
    );
    assert!(unit_cgroup_path("../x.service").is_err());
}

#[test]
fn missing_cgroup_is_an_error_naming_the_unit() {
    let tree = fake_tree();
    let err = Inventory::new(tree.path())
        .unit("gone.service", "/system.slice/gone.service", 100)
        .unwrap_err();
    assert!(matches!(&err, InventoryError::NoCgroup { unit, .. } if unit == "gone.service"));
    assert!(
        err.to_string()
            .starts_with("unit gone.service has no cgroup "),
        "{err}"
    );
    assert!(err.to_string().ends_with(": is it running?"), "{err}");
}

#[test]
fn empty_cgroup_is_an_error() {
    let tree = fake_tree();
    write(
        &tree
            .path()
            .join("sys/fs/cgroup/system.slice/idle.service/cgroup.procs"),
        "",
    );
    assert!(matches!(
        Inventory::new(tree.path()).cgroup_pids("idle.service", "/system.slice/idle.service"),
        Err(InventoryError::EmptyCgroup { .. })
    ));
}

#[test]
fn cgroup_path_must_stay_below_the_hierarchy() {
    let tree = fake_tree();
    let inventory = Inventory::new(tree.path());
    for bad in ["system.slice/demo.service", "/", "/system.slice/../..", ""] {
        assert!(
            matches!(
                inventory.cgroup_pids("demo.service", bad),
                Err(InventoryError::BadCgroupPath { .. })
            ),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn main_pid_outside_the_cgroup_is_an_error() {
    let tree = fake_tree();
    assert!(matches!(
        Inventory::new(tree.path()).unit("demo.service", "/system.slice/demo.service", 4242),
        Err(InventoryError::MainPidNotInCgroup { main_pid: 4242, .. })
    ));
}

#[test]
fn exited_worker_is_dropped_but_exited_main_pid_is_an_error() {
    let tree = fake_tree();
    fs::remove_dir_all(tree.path().join("proc/101")).unwrap();
    let inventory = Inventory::new(tree.path());
    let inv = inventory
        .unit("demo.service", "/system.slice/demo.service", 100)
        .unwrap();
    assert_eq!(inv.pids, vec![100]);
    assert!(inv.established.iter().all(|c| c.local.is_ipv4()));

    fs::remove_dir_all(tree.path().join("proc/100")).unwrap();
    write(
        &tree
            .path()
            .join("sys/fs/cgroup/system.slice/demo.service/worker/cgroup.procs"),
        "",
    );
    assert!(matches!(
        inventory.unit("demo.service", "/system.slice/demo.service", 100),
        Err(InventoryError::MainPidGone { main_pid: 100, .. })
    ));
}

#[test]
fn unit_in_its_own_network_namespace_uses_its_own_tables() {
    let tree = fake_tree();
    let root = tree.path();
    // pid 200 lives in another namespace; its table has a connection with
    // the same inode number layout but different addresses.
    write(
        &root.join("sys/fs/cgroup/system.slice/netns.service/cgroup.procs"),
        "200\n",
    );
    fd_link(root, 200, 3, "socket:[8001]");
    netns_link(root, 200, "net:[4026532000]");
    write(
        &root.join("proc/200/net/tcp"),
        &format!(
            "{TCP_HEADER}{}",
            tcp_line(0, "10.0.0.2:80", "10.0.0.1:33000", 0x01, 8001)
        ),
    );
    let inv = Inventory::new(root)
        .unit("netns.service", "/system.slice/netns.service", 200)
        .unwrap();
    assert_eq!(
        inv.established,
        vec![TcpConnection {
            local: "10.0.0.2:80".parse().unwrap(),
            remote: "10.0.0.1:33000".parse().unwrap(),
        }]
    );
}

#[test]
fn malformed_cgroup_procs_is_a_parse_error() {
    let tree = fake_tree();
    write(
        &tree
            .path()
            .join("sys/fs/cgroup/system.slice/demo.service/cgroup.procs"),
        "100\nabc\n",
    );
    assert!(matches!(
        Inventory::new(tree.path()).cgroup_pids("demo.service", "/system.slice/demo.service"),
        Err(InventoryError::Parse { line: 2, .. })
    ));
}

/// Lines captured from this project's x86_64 (little-endian) test VM while
/// a listener on 127.0.0.1:53725 had accepted a client from port 55486; the
/// kernel pads rows with trailing spaces, kept here.
#[cfg(target_endian = "little")]
#[test]
fn parses_real_tcp_lines() {
    let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode                                                     \n\
   0: 0100007F:D1DD 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 74894 1 000000001bb78f3a 100 0 0 10 0                     \n\
   1: 020200C0:BC08 507100CB:0050 06 00000000:00000000 03:00000AEC 00000000     0        0 0 3 0000000013a632c0                                      \n\
  20: 0100007F:D1DD 0100007F:D8BE 01 00000000:00000000 00:00000000 00000000     0        0 74896 1 000000008def4824 20 0 0 10 -1                     \n\
  21: 0100007F:D8BE 0100007F:D1DD 01 00000000:00000000 00:00000000 00000000     0        0 74895 2 00000000ef5a7780 20 0 0 10 -1                     \n";
    let rows = procnet::parse_inet_table(text, Family::V4, Path::new("tcp")).unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows[0].local,
        "127.0.0.1:53725".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(rows[0].remote, "0.0.0.0:0".parse::<SocketAddr>().unwrap());
    assert_eq!(rows[0].state, procnet::TCP_LISTEN);
    assert_eq!(rows[0].inode, 74894);
    // TIME_WAIT towards a web server: no inode.
    assert_eq!(
        rows[1].local,
        "192.0.2.2:48136".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        rows[1].remote,
        "203.0.113.80:80".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(rows[1].state, 0x06);
    assert_eq!(rows[1].inode, 0);
    assert_eq!(
        rows[2].local,
        "127.0.0.1:53725".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        rows[2].remote,
        "127.0.0.1:55486".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(rows[2].state, procnet::TCP_ESTABLISHED);
    assert_eq!(rows[2].inode, 74896);
    assert_eq!(
        rows[3].local,
        "127.0.0.1:55486".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        rows[3].remote,
        "127.0.0.1:53725".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(rows[3].inode, 74895);
}

/// Captured like the IPv4 lines: a listener on [::1]:33083 with a client
/// from port 52866, and a dual-stack listener on [::]:54433 that accepted an
/// IPv4 client from 127.0.0.1:54820 (shown as an IPv4-mapped address).
#[cfg(target_endian = "little")]
#[test]
fn parses_real_tcp6_lines() {
    let text = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000000000000000000001000000:813B 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 74897 1 00000000e7ec5737 100 0 0 10 0\n\
   1: 00000000000000000000000000000000:D4A1 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 74900 1 000000002a46c005 100 0 0 10 0\n\
   2: 00000000000000000000000001000000:CE82 00000000000000000000000001000000:813B 01 00000000:00000000 00:00000000 00000000     0        0 74898 2 0000000065503f34 20 0 0 10 -1\n\
   3: 0000000000000000FFFF00000100007F:D4A1 0000000000000000FFFF00000100007F:D624 01 00000000:00000000 00:00000000 00000000     0        0 74902 1 000000004a145692 20 0 0 10 -1\n";
    let rows = procnet::parse_inet_table(text, Family::V6, Path::new("tcp6")).unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0].local, "[::1]:33083".parse::<SocketAddr>().unwrap());
    assert_eq!(rows[0].state, procnet::TCP_LISTEN);
    assert_eq!(rows[1].local, "[::]:54433".parse::<SocketAddr>().unwrap());
    assert_eq!(rows[2].local, "[::1]:52866".parse::<SocketAddr>().unwrap());
    assert_eq!(rows[2].remote, "[::1]:33083".parse::<SocketAddr>().unwrap());
    assert_eq!(rows[2].state, procnet::TCP_ESTABLISHED);
    assert_eq!(rows[2].inode, 74898);
    let mapped = Ipv4Addr::LOCALHOST.to_ipv6_mapped();
    assert_eq!(rows[3].local, SocketAddr::from((mapped, 54433)));
    assert_eq!(rows[3].remote, SocketAddr::from((mapped, 54820)));
    assert_eq!(rows[3].inode, 74902);
}

/// A non-loopback IPv6 address, to check the word order (constructed from
/// the kernel's format: each 32-bit word of `s6_addr32` printed with %08X).
#[cfg(target_endian = "little")]
#[test]
fn decodes_global_ipv6_word_by_word() {
    assert_eq!(
        procnet::parse_address("B80D0120000000000000000001000000:01BB", Family::V6),
        Some("[2001:db8::1]:443".parse().unwrap())
    );
}

#[test]
fn address_decoding_round_trips_on_this_machine() {
    for addr in [
        "1.2.3.4:1",
        "255.0.0.1:65535",
        "[2001:db8:1:2:3:4:5:6]:443",
        "[fe80::1]:0",
    ] {
        let addr: SocketAddr = addr.parse().unwrap();
        let family = if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        };
        assert_eq!(procnet::parse_address(&hex_addr(addr), family), Some(addr));
    }
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 1));
    assert_eq!(procnet::parse_address(&hex_addr(v6), Family::V4), None);
    assert_eq!(procnet::parse_address("0100007F:+1F9", Family::V4), None);
    assert_eq!(procnet::parse_address("0100007F", Family::V4), None);
}

#[test]
fn malformed_table_lines_are_errors_with_line_numbers() {
    let text = format!("{TCP_HEADER}   0: 0100007F:1F90 0100007F:D2F0 01\n");
    assert!(matches!(
        procnet::parse_inet_table(&text, Family::V4, Path::new("tcp")),
        Err(InventoryError::Parse { line: 2, .. })
    ));
    let text = format!(
        "{TCP_HEADER}   0: XX00007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 5 1\n"
    );
    assert!(matches!(
        procnet::parse_inet_table(&text, Family::V4, Path::new("tcp")),
        Err(InventoryError::Parse { line: 2, .. })
    ));
}

#[test]
fn parses_real_unix_lines() {
    let text = "Num       RefCount Protocol Flags    Type St Inode Path\n\
00000000cf0cc60b: 00000003 00000000 00000000 0001 03 57837\n\
ffff9ab7122db000: 00000002 00000000 00010000 0001 01 10623 private/defer\n\
0000000000000000: 00000002 00000000 00000000 0002 01 39837 @/tmp/.ICE-unix/2642\n";
    let rows = procnet::parse_unix_table(text, Path::new("unix")).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].sock_type, procnet::UNIX_SOCK_STREAM);
    assert_eq!(rows[0].state, 3);
    assert_eq!(rows[0].inode, 57837);
    assert_eq!(rows[0].path, None);
    assert_eq!(rows[1].path.as_deref(), Some("private/defer"));
    assert_eq!(rows[2].sock_type, 2);
    assert_eq!(rows[2].path.as_deref(), Some("@/tmp/.ICE-unix/2642"));
}

/// Against the real `/proc` of this test process: a listener and a connected
/// pair on loopback must show up with the right ports.
#[test]
fn real_proc_lists_own_loopback_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = listener.local_addr().unwrap();
    let client = TcpStream::connect(server_addr).unwrap();
    let (accepted, peer) = listener.accept().unwrap();
    let client_addr = client.local_addr().unwrap();
    assert_eq!(peer, client_addr);

    let pid = i32::try_from(std::process::id()).unwrap();
    let sockets = Inventory::new(Path::new("/"))
        .sockets_of_pids(&[pid])
        .unwrap();
    assert!(
        sockets.listening.contains(&server_addr),
        "{server_addr} not in {:?}",
        sockets.listening
    );
    let outgoing = TcpConnection {
        local: client_addr,
        remote: server_addr,
    };
    let incoming = TcpConnection {
        local: server_addr,
        remote: client_addr,
    };
    assert!(
        sockets.established.contains(&outgoing),
        "{outgoing:?} not in {:?}",
        sockets.established
    );
    assert!(
        sockets.established.contains(&incoming),
        "{incoming:?} not in {:?}",
        sockets.established
    );
    assert!(sockets.gone_pids.is_empty());
    drop((accepted, client, listener));
}

#[test]
fn bad_pid_is_rejected() {
    let tree = fake_tree();
    assert!(matches!(
        Inventory::new(tree.path()).sockets_of_pids(&[100, 0]),
        Err(InventoryError::BadPid(0))
    ));
}

#[test]
fn thread_ids_come_from_cgroup_threads_without_the_processes() {
    let tmp = fake_tree();
    let inv = Inventory::new(tmp.path())
        .unit("demo.service", "/system.slice/demo.service", 100)
        .unwrap();
    assert_eq!(inv.pids, vec![100, 101]);
    assert_eq!(inv.thread_ids, vec![102, 103, 104]);
}

#[test]
fn processes_outside_the_main_tree_are_listed_with_their_names() {
    let tmp = fake_tree();
    let root = tmp.path();
    let inventory = Inventory::new(root);
    let inv = inventory
        .unit("demo.service", "/system.slice/demo.service", 100)
        .unwrap();
    assert!(
        inv.outside_main_tree.is_empty(),
        "{:?}",
        inv.outside_main_tree
    );

    // 105: an orphan adopted by PID 1; 106: its child; 107: a grandchild of
    // the main process; 108: exited before its stat was read.
    let cg = root.join("sys/fs/cgroup/system.slice/demo.service");
    write(&cg.join("cgroup.procs"), "100\n105\n106\n107\n108\n");
    write(
        &root.join("proc/105/stat"),
        "105 (a (b) c) S 1 105 105 0 -1\n",
    );
    write(
        &root.join("proc/106/stat"),
        "106 (sleep) S 105 105 105 0 -1\n",
    );
    write(&root.join("proc/107/stat"), "107 (sh) S 101 105 105 0 -1\n");
    let outside = inventory
        .outside_main_tree(100, &[100, 101, 105, 106, 107, 108])
        .unwrap();
    assert_eq!(
        outside,
        vec![
            OutsideProcess {
                pid: 105,
                ppid: 1,
                comm: "a (b) c".into()
            },
            OutsideProcess {
                pid: 106,
                ppid: 105,
                comm: "sleep".into()
            },
        ]
    );

    write(&root.join("proc/105/stat"), "105 garbage\n");
    assert!(matches!(
        inventory.outside_main_tree(100, &[100, 105]),
        Err(InventoryError::Parse { line: 1, .. })
    ));
}

#[test]
fn real_proc_knows_our_child_is_ours_and_pid_1_is_not() {
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let me = std::process::id() as i32;
    let child_pid = child.id() as i32;
    let outside = Inventory::new(Path::new("/")).outside_main_tree(me, &[me, child_pid, 1]);
    child.kill().unwrap();
    child.wait().unwrap();
    let outside = outside.unwrap();
    assert_eq!(
        outside.iter().map(|p| p.pid).collect::<Vec<_>>(),
        vec![1],
        "{outside:?}"
    );
    assert_eq!(outside[0].ppid, 0);
}

#[test]
fn namespaces_other_than_pid_1s_are_found_once_per_kind() {
    let tmp = fake_tree();
    let root = tmp.path();
    let link = |pid: i32, kind: &str, target: &str| {
        let dir = root.join(format!("proc/{pid}/ns"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(kind);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(target, path).unwrap();
    };
    let inventory = Inventory::new(root);
    // Without PID 1's links there is nothing to compare with.
    assert_eq!(inventory.foreign_namespaces(&[100, 101]).unwrap(), vec![]);
    for kind in ["mnt", "uts", "ipc"] {
        link(1, kind, &format!("{kind}:[1]"));
        link(100, kind, &format!("{kind}:[1]"));
        link(101, kind, &format!("{kind}:[1]"));
    }
    assert_eq!(inventory.foreign_namespaces(&[100, 101]).unwrap(), vec![]);
    // A worker in its own mount namespace, both in their own UTS namespace.
    link(101, "mnt", "mnt:[7]");
    link(100, "uts", "uts:[8]");
    link(101, "uts", "uts:[8]");
    assert_eq!(
        inventory.foreign_namespaces(&[100, 101, 999]).unwrap(),
        vec![
            ForeignNamespace {
                kind: "mnt".into(),
                pid: 101
            },
            ForeignNamespace {
                kind: "uts".into(),
                pid: 100
            },
        ]
    );
}

#[test]
fn real_proc_our_own_namespaces_are_pid_1s() {
    // The test runs in the machine's namespaces (or in a container, where
    // PID 1 shares ours too).
    let me = std::process::id() as i32;
    let found = Inventory::new(Path::new("/"))
        .foreign_namespaces(&[me])
        .unwrap();
    assert_eq!(found, vec![], "{found:?}");
}

#[test]
fn resident_memory_is_summed_over_the_processes() {
    let tmp = fake_tree();
    let root = tmp.path();
    write(
        &root.join("proc/100/status"),
        "Name:\tdemo\nVmRSS:\t  4096 kB\nThreads:\t2\n",
    );
    write(
        &root.join("proc/101/status"),
        "Name:\tworker\nVmRSS:\t 1024 kB\n",
    );
    // A kernel thread has no VmRSS; 999 has exited.
    write(&root.join("proc/102/status"), "Name:\tkthread\n");
    let inventory = Inventory::new(root);
    assert_eq!(
        inventory.resident_bytes(&[100, 101, 102, 999]).unwrap(),
        5120 * 1024
    );
    write(
        &root.join("proc/101/status"),
        "Name:\tworker\nVmRSS:\tlots\n",
    );
    assert!(matches!(
        inventory.resident_bytes(&[100, 101]),
        Err(InventoryError::Parse { line: 2, .. })
    ));
    // This process has some.
    let me = std::process::id() as i32;
    assert!(
        Inventory::new(Path::new("/"))
            .resident_bytes(&[me])
            .unwrap()
            > 0
    );
}

#[test]
fn finds_the_io_uring_instances_criu_cannot_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    for (pid, fds) in [
        (
            100,
            vec![("0", "/dev/null"), ("5", "anon_inode:[eventpoll]")],
        ),
        (
            101,
            vec![
                ("9", "anon_inode:[io_uring]"),
                ("3", "anon_inode:[io_uring]"),
            ],
        ),
    ] {
        let dir = root.path().join(format!("proc/{pid}/fd"));
        fs::create_dir_all(&dir).unwrap();
        for (fd, target) in fds {
            symlink(target, dir.join(fd)).unwrap();
        }
    }
    let found = Inventory::new(root.path())
        .unsupported_files(&[100, 101, 102])
        .unwrap();
    let fds: Vec<(i32, u32)> = found.iter().map(|f| (f.pid, f.fd)).collect();
    assert_eq!(fds, vec![(101, 3), (101, 9)]);
    assert_eq!(found[0].kind, "an io_uring instance");
}

#[test]
fn finds_the_main_processs_descendants_in_other_cgroups() {
    let root = tempfile::tempdir().unwrap();
    // 100 main, 101 its worker (in the unit), 102 a session (elsewhere)
    // with a shell 103 below it, 200 unrelated.
    for (pid, comm, ppid, cgroup) in [
        (1, "systemd", 0, "/init.scope"),
        (100, "sshd", 1, "/system.slice/ssh.service"),
        (101, "worker", 100, "/system.slice/ssh.service"),
        (
            102,
            "sshd-session",
            100,
            "/user.slice/user-0.slice/session-4.scope",
        ),
        (103, "bash", 102, "/user.slice/user-0.slice/session-4.scope"),
        (200, "other", 1, "/system.slice/other.service"),
    ] {
        let dir = root.path().join(format!("proc/{pid}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("stat"), format!("{pid} ({comm}) S {ppid} 0 0\n")).unwrap();
        fs::write(dir.join("cgroup"), format!("0::{cgroup}\n")).unwrap();
    }
    let found = Inventory::new(root.path())
        .descendants_elsewhere(100, &[100, 101])
        .unwrap();
    let got: Vec<(i32, &str, &str)> = found
        .iter()
        .map(|d| (d.pid, d.comm.as_str(), d.cgroup.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                102,
                "sshd-session",
                "/user.slice/user-0.slice/session-4.scope"
            ),
            (103, "bash", "/user.slice/user-0.slice/session-4.scope"),
        ]
    );
    assert_eq!(
        Inventory::new(root.path())
            .descendants_elsewhere(100, &[100, 101, 102, 103])
            .unwrap(),
        vec![]
    );
}

#[test]
fn unix_connections_to_processes_outside_the_unit_are_found_with_who_holds_the_other_end() {
    use super::unix_peers::UnixSocket;
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    // The unit: 100 and 101, connected to each other (10-12), 100 also to
    // psql (11-20), to journald on stdout (14-30, exempt), and a datagram
    // socket connected to one nobody in the tree holds (15-40, syslog's).
    fd_link(root, 100, 1, "socket:[14]");
    fd_link(root, 100, 3, "socket:[10]");
    fd_link(root, 100, 4, "socket:[11]");
    fd_link(root, 100, 5, "socket:[15]");
    fd_link(root, 101, 3, "socket:[12]");
    fd_link(root, 500, 3, "socket:[20]");
    write(&root.join("proc/500/comm"), "psql\n");
    let stream = libc::SOCK_STREAM as u8;
    let sockets = vec![
        UnixSocket {
            inode: 10,
            kind: stream,
            peer: Some(12),
        },
        UnixSocket {
            inode: 12,
            kind: stream,
            peer: Some(10),
        },
        UnixSocket {
            inode: 11,
            kind: stream,
            peer: Some(20),
        },
        UnixSocket {
            inode: 20,
            kind: stream,
            peer: Some(11),
        },
        UnixSocket {
            inode: 14,
            kind: stream,
            peer: Some(30),
        },
        UnixSocket {
            inode: 15,
            kind: libc::SOCK_DGRAM as u8,
            peer: Some(40),
        },
    ];
    let found = Inventory::new(root)
        .with_unix_sockets(sockets)
        .outside_unix_peers(&[100, 101], &[14])
        .expect("read");
    assert_eq!(
        found,
        vec![
            OutsideUnixPeer {
                pid: 100,
                inode: 11,
                peer_holder: Some("500 (`psql`)".into()),
            },
            OutsideUnixPeer {
                pid: 100,
                inode: 15,
                peer_holder: None,
            },
        ]
    );
}
