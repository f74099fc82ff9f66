//! The seccomp filter every sandboxed command runs under: what docker's default profile refuses a container
//! with docker's default capabilities, so a Dockerfile that builds under docker builds here, and one that
//! tries to create a user namespace (and regain every capability in it), load a kernel module, use the
//! kernel keyring, io_uring, BPF or perf, or mount through the new mount API cannot.
//!
//! A deny list, not docker's allow list: refusing a known set keeps every ordinary system call — including
//! ones newer than this table that the kernel knows — available to builds, while system calls numbered
//! beyond the table get ENOSYS, which is what programs probe for and fall back from (as runc does for calls
//! newer than a profile). `clone3` gets ENOSYS too, so that libc falls back to `clone`, whose namespace
//! flags the filter can see. Calls from another ABI than the kernel's own are checked against that ABI's
//! numbers (i386 on x86_64) or, where no table exists, refused: without that, `int 0x80` would walk past
//! the filter.
//!
//! The program is a binary search over the sorted system call numbers, so a call costs a handful of
//! comparisons, not one per rule. Hand-written because the x32 bit, the per-ABI tables and the argument
//! checks are a few dozen instructions, less than what binding a filter compiler would take.

use rustix::io::Errno;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the sandbox's seccomp tables cover x86_64 and aarch64 hosts");

// Classic BPF, as seccomp runs it.
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;

// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0_LOW: u32 = 16;
const ARG1_LOW: u32 = 24;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
/// x32 system calls arrive with the x86_64 arch and this bit in the number.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET: what docker refuses in `clone`
/// without CAP_SYS_ADMIN.
const CLONE_NAMESPACES: u32 = 0x7e02_0000;
/// `personality` values docker allows: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and the query.
const PERSONALITIES: [u32; 5] = [0, 8, 0x0002_0000, 0x0002_0008, 0xffff_ffff];
/// AF_ALG and AF_VSOCK: a kernel crypto interface and the hypervisor's sockets, both refused by docker's
/// current profile (moby/profiles; docker 26's still allowed AF_ALG, whose kernel side keeps having holes).
const SOCKET_FAMILIES: [u32; 2] = [38, 40];
/// TIOCSTI and TIOCLINUX: typing into, or reading, a terminal the command shares with the user (`kiln run`),
/// so that what a container typed runs in the user's shell once it exits.
const TERMINAL_INJECTION: [u32; 2] = [0x5412, 0x541c];

#[derive(Clone, Copy)]
#[repr(C)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

const fn stmt(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code, jt, jf, k }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Action {
    Refuse(i32),
    /// Allowed unless the first argument has one of these bits.
    RefuseFlags(u32),
    /// Allowed only for these first arguments.
    OnlyValues(&'static [u32]),
    /// Allowed unless the first argument is one of these.
    RefuseValues(&'static [u32]),
    /// Allowed unless the second argument is one of these.
    RefuseSecondValues(&'static [u32]),
}

struct Abi {
    arch: u32,
    /// Sorted by number when the filter is built.
    rules: Vec<(u32, Action)>,
    /// Numbers from here on are newer than the table: ENOSYS.
    unknown_from: u32,
}

const EPERM: Action = Action::Refuse(libc::EPERM);

/// The calls of the generic table (numbers 425 and up are the same on every architecture).
fn common_rules() -> Vec<(u32, Action)> {
    vec![
        // io_uring_setup, io_uring_enter, io_uring_register: a large attack surface docker closed in 2023.
        (425, EPERM),
        (426, EPERM),
        (427, EPERM),
        // open_tree, move_mount, fsopen, fsconfig, fsmount, fspick: mounting without mount(2).
        (428, EPERM),
        (429, EPERM),
        (430, EPERM),
        (431, EPERM),
        (432, EPERM),
        (433, EPERM),
        (435, Action::Refuse(libc::ENOSYS)),
        // pidfd_getfd, process_madvise, mount_setattr, quotactl_fd, set_mempolicy_home_node.
        (438, EPERM),
        (440, EPERM),
        (442, EPERM),
        (443, EPERM),
        (450, EPERM),
        // lsm_get_self_attr, lsm_set_self_attr, lsm_list_modules.
        (459, EPERM),
        (460, EPERM),
        (461, EPERM),
    ]
}

/// The first number newer than docker's profile (open_tree_attr, file_getattr, ... came after it): ENOSYS,
/// which programs fall back from, where EPERM would fail them.
const UNKNOWN_FROM: u32 = 467;

/// The kernel's own ABI, by libc's numbers for it.
fn native() -> Abi {
    let mut refused = vec![
        libc::SYS_syslog,
        libc::SYS_vhangup,
        libc::SYS_pivot_root,
        libc::SYS_acct,
        libc::SYS_settimeofday,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_reboot,
        libc::SYS_sethostname,
        libc::SYS_setdomainname,
        libc::SYS_init_module,
        libc::SYS_delete_module,
        libc::SYS_quotactl,
        libc::SYS_lookup_dcookie,
        libc::SYS_clock_settime,
        libc::SYS_mbind,
        libc::SYS_set_mempolicy,
        libc::SYS_get_mempolicy,
        libc::SYS_kexec_load,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_keyctl,
        libc::SYS_migrate_pages,
        libc::SYS_unshare,
        libc::SYS_move_pages,
        libc::SYS_perf_event_open,
        libc::SYS_fanotify_init,
        libc::SYS_open_by_handle_at,
        libc::SYS_setns,
        libc::SYS_kcmp,
        libc::SYS_finit_module,
        libc::SYS_kexec_file_load,
        libc::SYS_bpf,
        libc::SYS_userfaultfd,
    ];
    #[cfg(target_arch = "x86_64")]
    refused.extend([
        libc::SYS_uselib,
        libc::SYS_ustat,
        libc::SYS_sysfs,
        libc::SYS__sysctl,
        libc::SYS_iopl,
        libc::SYS_ioperm,
    ]);
    let mut rules: Vec<(u32, Action)> = refused.into_iter().map(|nr| (nr as u32, EPERM)).collect();
    rules.extend([
        (libc::SYS_clone as u32, Action::RefuseFlags(CLONE_NAMESPACES)),
        (libc::SYS_personality as u32, Action::OnlyValues(&PERSONALITIES)),
        (libc::SYS_socket as u32, Action::RefuseValues(&SOCKET_FAMILIES)),
        (
            libc::SYS_ioctl as u32,
            Action::RefuseSecondValues(&TERMINAL_INJECTION),
        ),
    ]);
    rules.extend(common_rules());
    Abi {
        #[cfg(target_arch = "x86_64")]
        arch: AUDIT_ARCH_X86_64,
        #[cfg(target_arch = "aarch64")]
        arch: AUDIT_ARCH_AARCH64,
        rules,
        unknown_from: UNKNOWN_FROM,
    }
}

/// i386 programs run natively on x86_64 (`--platform linux/386`), with their own numbers (the kernel's
/// syscall_32.tbl).
#[cfg(target_arch = "x86_64")]
fn compat() -> Option<Abi> {
    let mut rules: Vec<(u32, Action)> = [
        103, // syslog
        86,  // uselib
        62,  // ustat
        135, // sysfs
        111, // vhangup
        217, // pivot_root
        149, // _sysctl
        51,  // acct
        79,  // settimeofday
        25,  // stime
        21,  // mount
        22,  // umount
        52,  // umount2
        87,  // swapon
        115, // swapoff
        88,  // reboot
        74,  // sethostname
        121, // setdomainname
        110, // iopl
        101, // ioperm
        113, // vm86old
        166, // vm86
        128, // init_module
        129, // delete_module
        131, // quotactl
        253, // lookup_dcookie
        264, // clock_settime
        404, // clock_settime64
        274, // mbind
        276, // set_mempolicy
        275, // get_mempolicy
        283, // kexec_load
        286, // add_key
        287, // request_key
        288, // keyctl
        294, // migrate_pages
        310, // unshare
        317, // move_pages
        336, // perf_event_open
        338, // fanotify_init
        342, // open_by_handle_at
        346, // setns
        349, // kcmp
        350, // finit_module
        357, // bpf
        374, // userfaultfd
    ]
    .into_iter()
    .map(|nr| (nr, EPERM))
    .collect();
    rules.extend([
        (120, Action::RefuseFlags(CLONE_NAMESPACES)), // clone
        (136, Action::OnlyValues(&PERSONALITIES)),    // personality
        (359, Action::RefuseValues(&SOCKET_FAMILIES)),
        (54, Action::RefuseSecondValues(&TERMINAL_INJECTION)), // ioctl // socket
    ]);
    rules.extend(common_rules());
    Some(Abi {
        arch: AUDIT_ARCH_I386,
        rules,
        unknown_from: UNKNOWN_FROM,
    })
}

/// 32-bit ARM programs on arm64 hosts have no table here yet: their calls are refused.
#[cfg(target_arch = "aarch64")]
fn compat() -> Option<Abi> {
    None
}

/// The filter program: dispatch on the ABI, then search its rules.
fn program() -> Result<Vec<Insn>, String> {
    let abis: Vec<Abi> = std::iter::once(native()).chain(compat()).collect();
    let bodies = abis.iter().map(abi_body).collect::<Result<Vec<_>, _>>()?;
    let mut prog = vec![stmt(LD_W_ABS, ARCH)];
    // One jump per ABI to its body, which follows the dispatch jumps and the refusal for unknown ABIs.
    let mut before = 0;
    for (i, (abi, body)) in abis.iter().zip(&bodies).enumerate() {
        prog.push(jump(JEQ_K, abi.arch, short(abis.len() - i + before)?, 0));
        before += body.len();
    }
    prog.push(stmt(RET_K, RET_ERRNO | libc::EPERM as u32));
    prog.extend(bodies.into_iter().flatten());
    Ok(prog)
}

fn short(offset: usize) -> Result<u8, String> {
    u8::try_from(offset).map_err(|_| format!("seccomp jump of {offset} instructions is too long"))
}

fn abi_body(abi: &Abi) -> Result<Vec<Insn>, String> {
    let mut rules = abi.rules.clone();
    rules.sort();
    rules.dedup_by_key(|r| r.0);
    let mut body = vec![stmt(LD_W_ABS, NR)];
    if abi.arch == AUDIT_ARCH_X86_64 {
        // x32 calls: refused outright, as no build needs that ABI.
        body.push(jump(JGE_K, X32_SYSCALL_BIT, 0, 1));
        body.push(stmt(RET_K, RET_ERRNO | libc::EPERM as u32));
    }
    body.push(jump(JGE_K, abi.unknown_from, 0, 1));
    body.push(stmt(RET_K, RET_ERRNO | libc::ENOSYS as u32));
    body.extend(search(&rules)?);
    Ok(body)
}

/// A search tree over sorted rules; the accumulator holds the system call number on entry.
fn search(rules: &[(u32, Action)]) -> Result<Vec<Insn>, String> {
    if rules.len() <= 4 {
        let mut out = Vec::new();
        for &(nr, action) in rules {
            let check = check(action);
            out.push(jump(JEQ_K, nr, 0, short(check.len())?));
            out.extend(check);
        }
        out.push(stmt(RET_K, RET_ALLOW));
        return Ok(out);
    }
    let (low, high) = rules.split_at(rules.len() / 2);
    let low = search(low)?;
    let high = search(high)?;
    // At or above the high half's first number: over the low half.
    let mut out = vec![jump(JGE_K, rules[rules.len() / 2].0, short(low.len())?, 0)];
    out.extend(low);
    out.extend(high);
    Ok(out)
}

/// What happens once the number matched: always a return.
fn check(action: Action) -> Vec<Insn> {
    let eperm = stmt(RET_K, RET_ERRNO | libc::EPERM as u32);
    let allow = stmt(RET_K, RET_ALLOW);
    match action {
        Action::Refuse(errno) => vec![stmt(RET_K, RET_ERRNO | errno as u32)],
        Action::RefuseFlags(bits) => vec![stmt(LD_W_ABS, ARG0_LOW), jump(JSET_K, bits, 0, 1), eperm, allow],
        Action::OnlyValues(values) => {
            let mut out = vec![stmt(LD_W_ABS, ARG0_LOW)];
            let n = values.len();
            for (i, &v) in values.iter().enumerate() {
                // Jump to the allow at the end over the remaining compares and the refusal.
                out.push(jump(JEQ_K, v, (n - i) as u8, 0));
            }
            out.push(eperm);
            out.push(allow);
            out
        }
        Action::RefuseValues(values) => refuse_values(ARG0_LOW, values),
        Action::RefuseSecondValues(values) => refuse_values(ARG1_LOW, values),
    }
}

fn refuse_values(arg: u32, values: &[u32]) -> Vec<Insn> {
    let mut out = vec![stmt(LD_W_ABS, arg)];
    let n = values.len();
    for (i, &v) in values.iter().enumerate() {
        // Over the remaining compares and the allow, to the refusal.
        out.push(jump(JEQ_K, v, (n - i) as u8, 0));
    }
    out.push(stmt(RET_K, RET_ALLOW));
    out.push(stmt(RET_K, RET_ERRNO | libc::EPERM as u32));
    out
}

/// Installs the filter on the calling thread (the single-threaded command process), inherited by everything
/// it executes. Needs CAP_SYS_ADMIN, or no_new_privs (which would break set-user-ID programs in builds).
pub(crate) fn install() -> Result<(), Errno> {
    let prog = program().map_err(|_| Errno::INVAL)?;
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    super::sys::seccomp_set_filter(&fprog)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program the way the kernel does, on one `seccomp_data`.
    fn verdict(prog: &[Insn], arch: u32, nr: u32, arg0: u64) -> u32 {
        verdict_with(prog, arch, nr, [arg0, 0])
    }

    fn verdict_with(prog: &[Insn], arch: u32, nr: u32, args: [u64; 2]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        data[16..24].copy_from_slice(&args[0].to_le_bytes());
        data[24..32].copy_from_slice(&args[1].to_le_bytes());
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => {
                    let at = i.k as usize;
                    acc = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
                }
                RET_K => return i.k,
                JEQ_K | JGE_K | JSET_K => {
                    let taken = match i.code {
                        JEQ_K => acc == i.k,
                        JGE_K => acc >= i.k,
                        _ => acc & i.k != 0,
                    };
                    pc += if taken { i.jt } else { i.jf } as usize;
                }
                other => panic!("unexpected instruction {other:#x}"),
            }
        }
    }

    const EPERM_RET: u32 = RET_ERRNO | libc::EPERM as u32;
    const ENOSYS_RET: u32 = RET_ERRNO | libc::ENOSYS as u32;

    #[test]
    fn every_rule_is_reachable_and_everything_else_allowed() {
        let prog = program().unwrap();
        assert!(prog.len() < 4096, "over the kernel's limit");
        let abis: Vec<Abi> = std::iter::once(native()).chain(compat()).collect();
        for abi in &abis {
            let denied: std::collections::BTreeMap<u32, Action> = abi.rules.iter().copied().collect();
            for nr in 0..abi.unknown_from + 5 {
                let got = verdict(&prog, abi.arch, nr, 0);
                let want = match denied.get(&nr) {
                    _ if nr >= abi.unknown_from => ENOSYS_RET,
                    Some(Action::Refuse(errno)) => RET_ERRNO | *errno as u32,
                    // arg0 = 0: no namespace flag, an allowed personality, family 0.
                    Some(_) | None => RET_ALLOW,
                };
                assert_eq!(got, want, "arch {:#x} nr {nr}", abi.arch);
            }
        }
    }

    #[test]
    fn arguments_are_checked() {
        let prog = program().unwrap();
        let arch = native().arch;
        let clone = libc::SYS_clone as u32;
        assert_eq!(verdict(&prog, arch, clone, libc::CLONE_NEWUSER as u64), EPERM_RET);
        assert_eq!(
            verdict(&prog, arch, clone, (libc::CLONE_VM | libc::CLONE_THREAD) as u64),
            RET_ALLOW
        );
        let personality = libc::SYS_personality as u32;
        assert_eq!(verdict(&prog, arch, personality, 0x0040_0000), EPERM_RET);
        assert_eq!(verdict(&prog, arch, personality, 0xffff_ffff), RET_ALLOW);
        let socket = libc::SYS_socket as u32;
        assert_eq!(verdict(&prog, arch, socket, libc::AF_VSOCK as u64), EPERM_RET);
        assert_eq!(verdict(&prog, arch, socket, libc::AF_INET as u64), RET_ALLOW);
        assert_eq!(verdict(&prog, arch, libc::SYS_clone3 as u32, 0), ENOSYS_RET);
        let ioctl = libc::SYS_ioctl as u32;
        assert_eq!(
            verdict_with(&prog, arch, ioctl, [0, u64::from(TERMINAL_INJECTION[0])]),
            EPERM_RET
        );
        assert_eq!(verdict_with(&prog, arch, ioctl, [0, 0x5401]), RET_ALLOW);
        assert_eq!(
            verdict(&prog, 0x4000_0028, libc::SYS_getpid as u32, 0),
            EPERM_RET,
            "unknown ABI"
        );
        if arch == AUDIT_ARCH_X86_64 {
            assert_eq!(verdict(&prog, arch, X32_SYSCALL_BIT | 39, 0), EPERM_RET, "x32");
            assert_eq!(verdict(&prog, AUDIT_ARCH_I386, 310, 0), EPERM_RET, "i386 unshare");
            assert_eq!(verdict(&prog, AUDIT_ARCH_I386, 3, 0), RET_ALLOW, "i386 read");
        }
    }
}
