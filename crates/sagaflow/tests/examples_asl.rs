//! Every example's state machine (`examples/*/*.asl.json`) passes ASL
//! validation.

use std::path::Path;

#[test]
fn every_example_definition_is_valid_asl() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = Vec::new();
    for dir in std::fs::read_dir(&examples).expect("examples/") {
        let dir = dir.expect("entry").path();
        if !dir.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&dir).expect("example dir") {
            let path = file.expect("entry").path();
            if path.to_string_lossy().ends_with(".asl.json") {
                let text = std::fs::read_to_string(&path).expect("read");
                if let Err(e) = sagaflow_asl::parse::parse_definition(&text) {
                    panic!("{} is not valid ASL:\n{e}", path.display());
                }
                checked.push(path.file_name().unwrap().to_string_lossy().to_string());
            }
        }
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            "loan_approval.asl.json",
            "order_processing.asl.json",
            "travel_booking.asl.json"
        ]
    );
}
