#[test]
fn show() {
    let cases: &[&str] = &[
        "",
        "# only\n---\n",
        "version: 1\n",
        "version: 2\n",
        "version: \"1\"\n",
        "version: x\n",
        "version:\n",
        "version: 1\nfoo: 2\n",
        "version: 1\ndefaults:\n  unlabeled: maybe\n  external:\n  other: x\n",
        "version: 1\ndomains:\n  - name: Prod.org\n    cgroups: /x\n    endpoints: [10.10.1.0/16, foo, 10.0.0.0/33, \"fd00:10::1/64\", fd00:10::/64, 10.0.0.1]\n    extra: 1\n",
        "version: 1\ndomains:\n  - cgroups: []\n  - name: a.org\n    cgroups: [/a, /a/, relative]\n  - name: spiffe://a.org\n    cgroups: [/a]\n",
        "version: 1\ndomains:\n- name: a.org\nfederation:\n  - from: a.org\n    to: a.org\n  - {from: b.org, to: a.org, protocol: TCP, ports: [], owner: '', reason: \"  \"}\n",
        "version: 1\ndomains:\n- name: a.org\n- name: b.org\nfederation:\n  - from: a.org\n    to: b.org\n    protocol: tcp\n    ports: [0, 65536, \"9000-8000\", http, 80, [1]]\n    owner: x\n    reason: y\n",
        "version: 1\nversion: 1\n",
        "version: 1\ndomains: [\n",
        "- a\n",
        "version: 1\n---\nversion: 2\n",
        "version: 1\n...\nfoo: 1\n",
        "version: 1\ndomains:\n",
        "version: 1\ndomains:\n  - x\n  -\n  - name: a.org\n",
        "version: &a 1\n",
        "version: !!int 1\n",
    ];
    for c in cases {
        println!("==== {c:?}");
        match enforcer_policy::parse("p.yaml", c) {
            Ok(p) => println!("OK {p:?}"),
            Err(es) => {
                for e in es {
                    println!("{e}")
                }
            }
        }
    }
}
