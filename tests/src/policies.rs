//! Policy texts several test files share. `{root}` stands for the sandbox's cgroup root
//! (`Sandbox::policy` fills it in).

/// Two domains, prod and staging, bound to `{root}/prod` and `{root}/staging`, and one
/// staging -> prod TCP edge on each of `ports` (none: every crossing is refused), owned by
/// platform-team for `reason`.
pub fn staging_to_prod(ports: &[u16], reason: &str) -> String {
    let mut yaml = "version: 1
defaults: {unlabeled: allow, external: allow}
domains:
  - name: prod.example.org
    cgroups: ['{root}/prod']
  - name: staging.example.org
    cgroups: ['{root}/staging']
"
    .to_owned();
    if ports.is_empty() {
        yaml.push_str("federation: []\n");
        return yaml;
    }
    yaml.push_str("federation:\n");
    for port in ports {
        yaml.push_str(&format!(
            "  - id: e{port}
    from: staging.example.org
    to: prod.example.org
    protocol: tcp
    ports: [{port}]
    owner: platform-team
    reason: {reason}
"
        ));
    }
    yaml
}
