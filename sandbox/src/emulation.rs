//! Foreign architectures need nothing special in the sandbox: binfmt_misc with the `F` flag makes the kernel
//! run qemu-user-static for foreign binaries, even inside the rootfs. This only checks that it is set up, so
//! a build fails up front with a how-to instead of "exec format error" in the middle.

use std::path::Path;

use super::SandboxError;

const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// OCI architecture name (`GOARCH`) of an architecture or platform string: `linux/arm64/v8`, `aarch64`, ...
fn oci_arch(arch: &str) -> &str {
    let arch = arch.strip_prefix("linux/").unwrap_or(arch);
    let arch = arch.split('/').next().unwrap_or(arch);
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" | "arm64" => "arm64",
        "i386" | "i486" | "i586" | "i686" | "x86" => "386",
        "armhf" | "armel" | "armv6" | "armv6l" | "armv7" | "armv7l" => "arm",
        "powerpc64le" | "ppc64el" => "ppc64le",
        other => other,
    }
}

/// The qemu binfmt_misc entry name for an OCI architecture.
fn qemu_name(arch: &str) -> Option<&'static str> {
    Some(match arch {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "arm" => "arm",
        "386" => "i386",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "ppc64le" => "ppc64le",
        "mips64le" => "mips64el",
        "loong64" => "loongarch64",
        _ => return None,
    })
}

/// Architectures the host runs natively besides its own.
fn native(host: &str) -> &'static [&'static str] {
    match host {
        "amd64" => &["amd64", "386"],
        "arm64" => &["arm64"],
        _ => &[],
    }
}

/// Checks that binaries of `arch` (`arm64`, `linux/arm/v7`, `aarch64`, ...) can run here: natively, or
/// through a registered and enabled qemu binfmt_misc handler. The error says how to fix it.
pub fn check_emulation(arch: &str) -> Result<(), SandboxError> {
    check_in(Path::new(BINFMT_DIR), oci_arch(std::env::consts::ARCH), arch)
}

fn check_in(binfmt: &Path, host: &str, arch: &str) -> Result<(), SandboxError> {
    let wanted = oci_arch(arch);
    if wanted == host || native(host).contains(&wanted) {
        return Ok(());
    }
    let Some(qemu) = qemu_name(wanted) else {
        return Err(SandboxError::Emulation(format!(
            "cannot run {arch} binaries on this {host} host: no qemu emulator is known for that architecture"
        )));
    };
    let how_to = format!(
        "install and register qemu-user-static: `apt-get install qemu-user-static` then \
         `/lib/systemd/systemd-binfmt /usr/lib/binfmt.d/qemu-{qemu}.conf` \
         (or `update-binfmts --enable qemu-{qemu}`)"
    );
    if !binfmt.join("status").exists() {
        return Err(SandboxError::Emulation(format!(
            "cannot run {arch} binaries on this {host} host: binfmt_misc is not mounted at {}; mount it \
             (`mount -t binfmt_misc binfmt_misc {}`), then {how_to}",
            binfmt.display(),
            binfmt.display()
        )));
    }
    let entry = binfmt.join(format!("qemu-{qemu}"));
    let text = match std::fs::read_to_string(&entry) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SandboxError::Emulation(format!(
                "cannot run {arch} binaries on this {host} host: no qemu handler is registered \
                 ({} is missing); {how_to}",
                entry.display()
            )));
        }
        Err(e) => {
            return Err(SandboxError::Emulation(format!(
                "cannot run {arch} binaries: reading {}: {e}",
                entry.display()
            )));
        }
    };
    let global = std::fs::read_to_string(binfmt.join("status")).unwrap_or_default();
    if text.lines().next().map(str::trim) != Some("enabled") || global.trim() == "disabled" {
        return Err(SandboxError::Emulation(format!(
            "cannot run {arch} binaries on this {host} host: {} is disabled; `echo 1 > {}` or {how_to}",
            entry.display(),
            entry.display()
        )));
    }
    // Without F (fix binary) the kernel looks for the interpreter inside the container's rootfs, which has
    // none.
    let flags = text
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .unwrap_or("")
        .trim();
    if !flags.contains('F') {
        return Err(SandboxError::Emulation(format!(
            "cannot run {arch} binaries in a container: {} is registered without the F flag \
             (flags: {flags:?}), so the interpreter would be looked up inside the image; {how_to}",
            entry.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_platforms() {
        assert_eq!(oci_arch("linux/arm64/v8"), "arm64");
        assert_eq!(oci_arch("aarch64"), "arm64");
        assert_eq!(oci_arch("linux/arm/v7"), "arm");
        assert_eq!(oci_arch("x86_64"), "amd64");
    }

    #[test]
    fn native_needs_nothing() {
        let nowhere = Path::new("/nonexistent");
        assert!(check_in(nowhere, "amd64", "linux/amd64").is_ok());
        assert!(check_in(nowhere, "amd64", "386").is_ok());
    }

    #[test]
    fn reads_the_binfmt_entry() {
        let dir = std::env::temp_dir().join(format!("kiln-binfmt-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("status"), "enabled\n").unwrap();
        let err = check_in(&dir, "amd64", "arm64").unwrap_err().to_string();
        assert!(err.contains("apt-get install qemu-user-static"), "{err}");
        assert!(err.contains("/usr/lib/binfmt.d/qemu-aarch64.conf"), "{err}");

        let entry = dir.join("qemu-aarch64");
        std::fs::write(
            &entry,
            "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\n",
        )
        .unwrap();
        assert!(check_in(&dir, "amd64", "arm64").is_ok());
        std::fs::write(&entry, "disabled\ninterpreter /x\nflags: POCF\n").unwrap();
        assert!(
            check_in(&dir, "amd64", "arm64")
                .unwrap_err()
                .to_string()
                .contains("disabled")
        );
        std::fs::write(&entry, "enabled\ninterpreter /x\nflags: \n").unwrap();
        assert!(
            check_in(&dir, "amd64", "arm64")
                .unwrap_err()
                .to_string()
                .contains("F flag")
        );
        assert!(check_in(&dir, "amd64", "sparc").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
