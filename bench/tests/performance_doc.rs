//! docs/PERFORMANCE.md's "Latest run" table is `bench/results.json` of the
//! run it names: every row whose first cell is a `key` must carry that key's
//! median and range exactly as the file holds them, so a figure cannot be
//! edited by hand or left over from another run.

use serde_json::Value;

fn read(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A figure as the document writes it: digits with thousands separators.
fn number(cell: &str) -> Option<f64> {
    cell.trim().replace(',', "").parse().ok()
}

fn same(doc: f64, json: f64) -> bool {
    (doc - json).abs() <= 1e-9 * json.abs().max(1.0)
}

#[test]
fn the_latest_run_table_is_results_json() {
    let results: Value = serde_json::from_str(&read("results.json")).expect("results.json");
    let doc = read("../docs/PERFORMANCE.md");
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Latest run"))
        .expect("a \"## Latest run\" section");
    let mut rows = 0;
    for line in section.lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        let Some(key) = cells
            .first()
            .map(|c| c.trim())
            .and_then(|c| c.strip_prefix('`'))
            .and_then(|c| c.strip_suffix('`'))
        else {
            continue;
        };
        rows += 1;
        let json = &results[key];
        let shown = cells.get(1).copied().unwrap_or_default();
        match (number(shown), json.as_f64()) {
            (Some(d), Some(j)) => assert!(same(d, j), "{key}: document {d}, results.json {j}"),
            _ => assert_eq!(
                shown.trim(),
                json.as_str().unwrap_or("<missing>"),
                "{key}: document and results.json differ"
            ),
        }
        if let Some(range) = results["ranges"][key].as_array() {
            let cell = cells.get(2).copied().unwrap_or_default();
            let (lo, hi) = cell
                .split_once('–')
                .unwrap_or_else(|| panic!("{key}: range cell {cell:?} is not \"lo – hi\""));
            for (d, j) in [(lo, &range[0]), (hi, &range[1])] {
                let (d, j) = (number(d), j.as_f64());
                assert!(
                    matches!((d, j), (Some(d), Some(j)) if same(d, j)),
                    "{key}: range {cell:?} is not results.json's {range:?}"
                );
            }
        }
    }
    assert!(rows >= 20, "only {rows} figures in the latest run table");
}
