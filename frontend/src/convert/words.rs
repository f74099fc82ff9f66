//! Checks and parsers for the words of instructions (ports, signals, --chown, --chmod) that need no state,
//! each with the error message the user sees.

use kiln_llb::Owner;

pub(super) fn owner_of(user: &str) -> Option<Owner> {
    if user.is_empty() {
        return None;
    }
    parse_owner(user).ok()
}

pub(super) fn parse_owner(chown: &str) -> Result<Owner, String> {
    let (user, group) = match chown.split_once(':') {
        Some((u, g)) => (u, Some(g.to_string())),
        None => (chown, None),
    };
    if user.is_empty() {
        return Err(format!(
            "invalid --chown {chown:?}: the user is empty (write USER[:GROUP])"
        ));
    }
    Ok(Owner {
        user: user.to_string(),
        group: group.filter(|g| !g.is_empty()),
    })
}

pub(super) fn validate_chmod(chmod: &str) -> Result<(), String> {
    let octal = u32::from_str_radix(chmod, 8)
        .ok()
        .filter(|m| *m <= 0o7777 && !chmod.is_empty());
    let symbolic = !chmod.is_empty()
        && chmod.split(',').all(|clause| {
            let ops = clause.trim_start_matches(['u', 'g', 'o', 'a']);
            !ops.is_empty()
                && ops.starts_with(['+', '-', '='])
                && ops.chars().all(|c| "+-=rwxXst".contains(c))
        });
    if octal.is_some() || symbolic {
        Ok(())
    } else {
        Err(format!(
            "invalid --chmod {chmod:?}: use an octal mode like 0755 or a symbolic one like u+x,go-w"
        ))
    }
}

pub(super) fn validate_signal(signal: &str) -> Result<(), String> {
    let name = signal.strip_prefix("SIG").unwrap_or(signal);
    let known = [
        "ABRT", "ALRM", "BUS", "CHLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL", "PIPE",
        "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP", "TTIN", "TTOU",
        "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
    ];
    let realtime = name
        .strip_prefix("RTMIN")
        .or_else(|| name.strip_prefix("RTMAX"))
        .is_some();
    if known.contains(&name) || realtime || signal.parse::<u32>().is_ok_and(|n| (1..=64).contains(&n)) {
        Ok(())
    } else {
        Err(format!(
            "invalid signal {signal:?}: use a name like SIGTERM or a number"
        ))
    }
}

/// `80`, `80/tcp`, `8000-8002/udp` → `["80/tcp"]`, `["8000/udp", "8001/udp", "8002/udp"]`.
pub(super) fn parse_ports(word: &str) -> Result<Vec<String>, String> {
    let bad = || format!("invalid port {word:?}: write PORT[/PROTOCOL] or START-END[/PROTOCOL], e.g. 80/tcp");
    let (ports, proto) = match word.split_once('/') {
        Some((p, proto)) => (p, proto.to_lowercase()),
        None => (word, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad());
    }
    let (start, end) = match ports.split_once('-') {
        Some((s, e)) => (
            s.parse::<u16>().map_err(|_| bad())?,
            e.parse::<u16>().map_err(|_| bad())?,
        ),
        None => {
            let p = ports.parse::<u16>().map_err(|_| bad())?;
            (p, p)
        }
    };
    if end < start {
        return Err(bad());
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

pub(super) fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(parse_ports("80"), Ok(vec!["80/tcp".to_string()]));
        assert_eq!(parse_ports("53/UDP"), Ok(vec!["53/udp".to_string()]));
        assert_eq!(parse_ports("8000-8001").map(|p| p.len()), Ok(2));
        assert!(parse_ports("http").is_err());
        assert!(parse_ports("80/xyz").is_err());
        assert!(parse_ports("9-1").is_err());
    }

    #[test]
    fn chmod_forms() {
        assert!(validate_chmod("0755").is_ok());
        assert!(validate_chmod("u+x,go-w").is_ok());
        assert!(validate_chmod("999").is_err());
        assert!(validate_chmod("").is_err());
    }
}
