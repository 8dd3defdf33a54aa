//! docs/FORMAT.md §9.1 prints the action table; this fails if the document
//! and `custody_ledger::actions::ACTION_TABLE` ever disagree.

#[test]
fn format_md_prints_the_action_table() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/FORMAT.md"))
        .expect("docs/FORMAT.md");
    let table = custody_ledger::actions::table_markdown();
    assert!(
        doc.contains(&table),
        "docs/FORMAT.md §9.1 must contain exactly this table:\n\n{table}"
    );
}

#[test]
fn format_md_lists_every_reserved_namespace() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/FORMAT.md"))
        .expect("docs/FORMAT.md");
    let listed: Vec<String> = custody_ledger::actions::RESERVED_NAMESPACES
        .iter()
        .map(|n| format!("`{n}`"))
        .collect();
    let line = format!("Reserved namespaces: {}.", listed.join(", "));
    assert!(doc.contains(&line), "docs/FORMAT.md must say:\n{line}");
}
