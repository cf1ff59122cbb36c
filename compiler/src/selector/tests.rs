use super::*;
use proptest::prelude::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn sel(src: &str) -> Selector {
    match parse(src) {
        Ok(s) => s,
        Err(e) => panic!("{src:?} should parse: {e}"),
    }
}

#[test]
fn table_of_selectors_and_label_sets() {
    let none = labels(&[]);
    let web = labels(&[("app", "web"), ("tier", "frontend")]);
    let db = labels(&[("app", "db"), ("tier", "backend"), ("kubernetes.io/metadata.name", "prod")]);
    let empty_value = labels(&[("app", "")]);
    let quoted = labels(&[("note", "it's \"fine\"")]);
    // (selector, label set, expected)
    let cases: &[(&str, &BTreeMap<String, String>, bool)] = &[
        ("", &none, true),
        ("   \t\n", &web, true),
        ("all()", &none, true),
        ("all( )", &db, true),
        ("!all()", &web, false),
        ("global()", &web, false),
        ("!global()", &web, true),
        // ==
        ("app == 'web'", &web, true),
        ("app == \"web\"", &web, true),
        ("app == 'db'", &web, false),
        ("app == 'web'", &none, false),
        ("app == ''", &empty_value, true),
        ("app == ''", &none, false),
        // != matches an absent label
        ("app != 'web'", &web, false),
        ("app != 'db'", &web, true),
        ("app != 'web'", &none, true),
        ("app != ''", &empty_value, false),
        // has / !has
        ("has(app)", &web, true),
        ("has( app )", &web, true),
        ("has(app)", &none, false),
        ("!has(app)", &none, true),
        ("!has(app)", &web, false),
        ("has(kubernetes.io/metadata.name)", &db, true),
        ("has(app)", &empty_value, true),
        // in / not in (not in matches an absent label)
        ("app in {'web', 'db'}", &web, true),
        ("app in {'web', 'db'}", &db, true),
        ("app in {'x'}", &web, false),
        ("app in {'web'}", &none, false),
        ("app in {}", &web, false),
        ("app not in {'web'}", &web, false),
        ("app not in {'db'}", &web, true),
        ("app not in {'web', 'db'}", &none, true),
        ("app not in {}", &none, true),
        ("app in {\"web\",'db'}", &web, true),
        ("app  not   in{'db'}", &db, false),
        // contains / starts with / ends with: false when absent
        ("app contains 'e'", &web, true),
        ("app contains 'x'", &web, false),
        ("app contains ''", &web, true),
        ("app contains ''", &none, false),
        ("tier starts with 'front'", &web, true),
        ("tier starts with 'end'", &web, false),
        ("tier starts with 'x'", &none, false),
        ("tier ends with 'end'", &web, true),
        ("tier ends with 'end'", &db, true),
        ("tier ends with 'front'", &web, false),
        ("tier ends with ''", &none, false),
        ("!tier ends with 'x'", &none, true),
        // ! applies to the whole comparison
        ("!app == 'web'", &web, false),
        ("!app == 'web'", &none, true),
        ("!!has(app)", &web, true),
        // precedence: ! > && > ||
        ("has(app) || has(x) && has(y)", &web, true),
        ("(has(app) || has(x)) && has(y)", &web, false),
        ("has(x) && has(y) || has(app)", &web, true),
        ("has(x) && (has(y) || has(app))", &web, false),
        ("!has(app) || tier == 'frontend'", &web, true),
        ("!(has(app) && tier == 'frontend')", &web, false),
        ("!has(app) && tier == 'frontend'", &web, false),
        ("app == 'db' || app == 'web' && tier == 'backend'", &web, false),
        ("app == 'db' || app == 'web' && tier == 'backend'", &db, true),
        ("((((app == 'web'))))", &web, true),
        // quoting: the other quote character is an ordinary character
        ("note == 'it'", &quoted, false),
        ("note contains \"it's\"", &quoted, true),
        ("note contains '\"fine\"'", &quoted, true),
        ("note ends with '\"'", &quoted, true),
        // Kubernetes-style keys
        ("kubernetes.io/metadata.name == 'prod'", &db, true),
        ("kubernetes.io/metadata.name != 'prod'", &web, true),
        // keywords are ordinary label keys where a key is expected
        ("in == 'x'", &labels(&[("in", "x")]), true),
        ("has == 'x' && all != 'y'", &labels(&[("has", "x")]), true),
        ("not not in {'a'}", &labels(&[("not", "b")]), true),
    ];
    for (src, labels, expected) in cases {
        let s = sel(src);
        assert_eq!(s.matches(*labels), *expected, "{src:?} on {labels:?} (canonical {s})");
        // The canonical form means the same thing.
        assert_eq!(sel(&s.to_string()).matches(*labels), *expected, "canonical {s}");
    }
}

#[test]
fn global_is_true_only_for_non_namespaced_resources() {
    let set = labels(&[("role", "dns")]);
    let s = sel("global() && role == 'dns'");
    assert!(!s.matches(&set));
    assert!(s.matches(&GlobalLabels(&set)));
    assert!(!sel("!global()").matches(&GlobalLabels(&set)));
    assert!(sel("all()").matches(&GlobalLabels(&set)));
    assert!(s.uses_global());
    assert!(sel("!(a == 'b' || !global())").uses_global());
    assert!(!sel("role == 'dns'").uses_global());
    let hash: HashMap<String, String> = set.into_iter().collect();
    assert!(sel("role in {'dns'}").matches(&hash));
}

#[test]
fn canonical_printing() {
    let cases = [
        ("", "all()"),
        ("(app == \"web\")", "app == 'web'"),
        ("app==\"it's\"", "app == \"it's\""),
        ("app in {\"b\", 'a', 'b'}", "app in {'a', 'b'}"),
        ("app not in {}", "app not in {}"),
        ("(a == 'x' && b == 'y') || c == 'z'", "a == 'x' && b == 'y' || c == 'z'"),
        ("a == 'x' && (b == 'y' || c == 'z')", "a == 'x' && (b == 'y' || c == 'z')"),
        ("a == 'x' && (b == 'y' && c == 'z')", "a == 'x' && b == 'y' && c == 'z'"),
        ("(a == 'x' || b == 'y') || (c == 'z')", "a == 'x' || b == 'y' || c == 'z'"),
        ("!(a == 'x' && b == 'y') || c == 'z'", "!(a == 'x' && b == 'y') || c == 'z'"),
        ("!(a == 'x')", "!a == 'x'"),
        ("! has( k )", "!has(k)"),
        ("!(!has(k))", "!!has(k)"),
        ("!(a in {'x'} || global())", "!(a in {'x'} || global())"),
        ("!(all() && (all() || all()))", "!(all() && (all() || all()))"),
        (
            "a starts  with 'p' && b ends with 's' && c contains 'm'",
            "a starts with 'p' && b ends with 's' && c contains 'm'",
        ),
    ];
    for (src, canonical) in cases {
        let s = sel(src);
        assert_eq!(s.to_string(), canonical, "{src:?}");
        assert_eq!(sel(canonical), s, "{canonical:?} parses back");
    }
}

#[test]
fn canonical_equality_ignores_grouping_order_and_quotes() {
    assert_eq!(sel("a in {'y', \"x\", 'x'}"), sel("(a in {'x','y'})"));
    assert_eq!(
        sel("(a == 'x' && b == 'y') && c == 'z'"),
        sel("a == 'x' && (b == 'y' && c == 'z')")
    );
    assert_ne!(sel("a == 'x' && b == 'y'"), sel("b == 'y' && a == 'x'"), "operand order is kept");
    assert_eq!("has(a)".parse::<Selector>(), Ok(sel("(has(a))")));
}

#[test]
fn is_all_label_keys_and_expr() {
    assert!(sel("").is_all());
    assert!(sel(" ( all() ) ").is_all());
    assert!(Selector::all().is_all());
    assert!(Selector::default().is_all());
    assert!(!sel("!all()").is_all());
    assert!(!sel("all() && all()").is_all(), "is_all is syntactic");
    let s = sel("a == 'x' || !has(b/c) && d in {'1'} && e not in {} || f contains 'q' || \
                 g starts with 'h' || i ends with 'j' || k != 'l' || global()");
    let keys: Vec<String> = s.label_keys().into_iter().collect();
    assert_eq!(keys, ["a", "b/c", "d", "e", "f", "g", "i", "k"]);
    assert!(sel("all() || global()").label_keys().is_empty());
    assert_eq!(sel("has(a)").expr(), &Expr::Has("a".into()));
    assert_eq!(
        sel("!x == 'y'").expr(),
        &Expr::Not(Box::new(Expr::Eq { key: "x".into(), value: "y".into() }))
    );
}

#[test]
fn from_expr_canonicalises_and_rejects_unprintable_trees() {
    let eq = |k: &str, v: &str| Expr::Eq { key: k.into(), value: v.into() };
    let nested = Expr::And(vec![
        Expr::And(vec![eq("a", "1"), Expr::And(vec![eq("b", "2")])]),
        Expr::Or(vec![eq("c", "3")]),
    ]);
    let s = Selector::from_expr(nested);
    assert_eq!(s, Ok(sel("a == '1' && b == '2' && c == '3'")));
    assert_eq!(Selector::from_expr(Expr::And(vec![])), Ok(Selector::all()));
    let nothing = Selector::from_expr(Expr::Or(vec![])).map(|s| s.to_string());
    assert_eq!(nothing, Ok("!all()".to_string()));

    let bad_key = Selector::from_expr(eq("a b", "1")).map_err(|e| e.to_string());
    assert_eq!(
        bad_key,
        Err("column 0: label key \"a b\" is not valid (use 1 or more of A-Z a-z 0-9 . _ / -)"
            .to_string())
    );
    assert!(Selector::from_expr(Expr::Has(String::new())).is_err());
    let both_quotes = Expr::In { key: "a".into(), values: ["x'\"".to_string()].into() };
    assert!(Selector::from_expr(both_quotes).is_err());
    // One quote kind is fine and round-trips.
    let one_quote = Selector::from_expr(eq("a", "it's")).map(|s| s.to_string());
    assert_eq!(one_quote, Ok("a == \"it's\"".to_string()));

    // Deep trees: refused, not a stack overflow.
    let mut deep = Expr::All;
    for _ in 0..100_000 {
        deep = Expr::Not(Box::new(deep));
    }
    assert!(Selector::from_expr(deep).is_err());
    let mut ok = Expr::All;
    for _ in 0..MAX_DEPTH {
        ok = Expr::Not(Box::new(ok));
    }
    let ok = Selector::from_expr(ok).map(|s| s.to_string());
    assert_eq!(ok.as_deref().map(str::len), Ok(MAX_DEPTH + "all()".len()));
}

#[test]
fn nesting_is_bounded() {
    let at_limit = format!("{}all(){}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
    assert!(parse(&at_limit).is_ok());
    let over = format!("{}all(){}", "(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
    let e = parse(&over).unwrap_err();
    assert_eq!(e.column, MAX_DEPTH + 1);
    assert!(parse(&"(".repeat(1_000_000)).is_err());
    assert!(parse(&"!".repeat(1_000_000)).is_err());
    let nots = format!("{}a == 'x'", "!".repeat(MAX_DEPTH));
    let s = sel(&nots);
    assert_eq!(sel(&s.to_string()), s);
    // Long flat chains are not nesting.
    let chain = vec!["has(a)"; 50_000].join(" && ");
    assert!(sel(&chain).matches(&labels(&[("a", "")])));
}

#[test]
fn error_columns_count_characters_not_bytes() {
    let e = parse("app == 'üü' && ?").unwrap_err();
    assert_eq!(e.column, 16, "{e}");
    let e = parse("app == 'ü").unwrap_err();
    assert_eq!(e.column, 8, "{e}");
}

/// Bad selectors and their errors; the snapshot is the spec for error messages.
#[test]
fn error_messages() {
    let bad = [
        "app",
        "app =",
        "app = 'web'",
        "app == web",
        "app == 'web",
        "app == \"web",
        "app == 'web' &&",
        "app == 'web' & tier == 'x'",
        "app == 'web' | tier == 'x'",
        "app == 'web' tier == 'x'",
        "app == 'web')",
        "(app == 'web'",
        "((app == 'web') && (b == 'c'",
        "!",
        "&& a == 'b'",
        "|| a == 'b'",
        "()",
        "foo(bar)",
        "has()",
        "has(a",
        "has(a b)",
        "has('a')",
        "all(x)",
        "global(1)",
        "app in 'web'",
        "app in {'web' 'db'}",
        "app in {'web',}",
        "app in {web}",
        "app in {'web'",
        "app not {'web'}",
        "app notin {'web'}",
        "app starts 'x'",
        "app startswith 'x'",
        "app ends with",
        "app contains",
        "app ~= 'x'",
        "app == 'x' && tier == 'y' || ",
        "ä == 'x'",
        "'web' == app",
        "{'a'}",
        "app == 'x' == 'y'",
        "has(a) has(b)",
        "app in {'a'} in {'b'}",
    ];
    let mut out = String::new();
    for src in bad {
        let line = match parse(src) {
            Ok(s) => format!("UNEXPECTEDLY PARSED as {s}"),
            Err(e) => e.to_string(),
        };
        out.push_str(&format!("{src}\n  {line}\n"));
    }
    let deep = format!("{}all(){}", "(".repeat(300), ")".repeat(300));
    let line = parse(&deep).map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
    out.push_str(&format!("'(' x 300 + all() + ')' x 300\n  {line}\n"));
    insta::with_settings!({
        snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/../snapshots"),
        prepend_module_to_snapshot => false,
    }, {
        insta::assert_snapshot!("selector_errors", out);
    });
}

// ---- property tests ----

const KEYS: &[&str] =
    &["app", "tier", "kubernetes.io/metadata.name", "has", "in", "not", "all", "a.b-c_d/e"];
const VALUES: &[&str] = &["", "a", "b", "web", "it's", "say \"hi\"", "a b", "{x,y}", "&& ||"];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(KEYS).prop_map(String::from),
        1 => "[A-Za-z0-9._/-]{1,6}",
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(VALUES).prop_map(String::from),
        1 => "[ab' ]{0,3}",
        1 => "[ab\" ]{0,3}",
    ]
}

fn leaf() -> impl Strategy<Value = Expr> {
    let values = || proptest::collection::btree_set(value(), 0..4);
    prop_oneof![
        Just(Expr::All),
        Just(Expr::Global),
        key().prop_map(Expr::Has),
        (key(), value()).prop_map(|(key, value)| Expr::Eq { key, value }),
        (key(), value()).prop_map(|(key, value)| Expr::Ne { key, value }),
        (key(), values()).prop_map(|(key, values)| Expr::In { key, values }),
        (key(), values()).prop_map(|(key, values)| Expr::NotIn { key, values }),
        (key(), value()).prop_map(|(key, value)| Expr::Contains { key, value }),
        (key(), value()).prop_map(|(key, value)| Expr::StartsWith { key, value }),
        (key(), value()).prop_map(|(key, value)| Expr::EndsWith { key, value }),
    ]
}

/// Random trees, including degenerate (0- and 1-operand, directly nested) And/Or.
fn expr() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(6, 48, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Expr::And),
            proptest::collection::vec(inner, 0..4).prop_map(Expr::Or),
        ]
    })
}

/// A label set drawn from the same keys and values, so that selectors often match.
#[derive(Debug, Clone)]
struct TestLabels {
    map: BTreeMap<String, String>,
    global: bool,
}

impl Labels for TestLabels {
    fn label(&self, key: &str) -> Option<&str> {
        self.map.label(key)
    }
    fn is_global(&self) -> bool {
        self.global
    }
}

fn test_labels() -> impl Strategy<Value = TestLabels> {
    let pair = (proptest::sample::select(KEYS).prop_map(String::from), value());
    (proptest::collection::btree_map(pair.0, pair.1, 0..6), any::<bool>())
        .prop_map(|(map, global)| TestLabels { map, global })
}

/// Token soup: mostly-valid fragments, to reach deep into the parser.
fn token_soup() -> impl Strategy<Value = String> {
    const TOKENS: &[&str] = &[
        "a", "b/c", "==", "!=", "'x'", "\"y'\"", "'", "\"", "(", ")", "!", "&&", "||", "&", "|",
        "=", "in", "not", "{", "}", ",", "has(", "has", "all()", "global()", "all(", "contains",
        "starts", "with", "ends", "foo(", "ä", "\t", "",
    ];
    proptest::collection::vec(proptest::sample::select(TOKENS), 0..24).prop_map(|t| t.join(" "))
}

fn check_no_panic_and_round_trip(src: &str) -> Result<(), TestCaseError> {
    match parse(src) {
        Ok(s) => {
            let printed = s.to_string();
            let again = parse(&printed);
            prop_assert_eq!(again.as_ref(), Ok(&s), "printed {:?}", printed);
        }
        Err(e) => {
            prop_assert!(e.column <= src.chars().count() + 1, "column {} for {:?}", e.column, src);
            prop_assert!(e.column >= 1);
            prop_assert!(!e.message.is_empty());
        }
    }
    Ok(())
}

proptest! {
    // No regression files: they would land outside this module's directory; a failure prints
    // its minimal case, which belongs in the table tests above.
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn print_parse_round_trip(e in expr()) {
        let s = Selector::from_expr(e);
        prop_assert!(s.is_ok(), "{:?}", s);
        let Ok(s) = s else { return Ok(()) };
        let printed = s.to_string();
        let reparsed = parse(&printed);
        prop_assert_eq!(reparsed.as_ref(), Ok(&s), "printed {:?}", printed);
        // Printing is idempotent, and canonicalising twice changes nothing.
        prop_assert_eq!(reparsed.map(|r| r.to_string()), Ok(printed));
        let recanonicalised = Selector::from_expr(s.expr().clone());
        prop_assert_eq!(recanonicalised, Ok(s));
    }

    #[test]
    fn printing_preserves_meaning(e in expr(), l in test_labels()) {
        let expected = e.matches(&l);
        let s = Selector::from_expr(e);
        prop_assert!(s.is_ok());
        let Ok(s) = s else { return Ok(()) };
        prop_assert_eq!(s.matches(&l), expected);
        let reparsed = parse(&s.to_string());
        prop_assert_eq!(reparsed.map(|r| r.matches(&l)), Ok(expected));
    }

    #[test]
    fn arbitrary_strings_never_panic(src in any::<String>()) {
        check_no_panic_and_round_trip(&src)?;
    }

    #[test]
    fn token_soup_never_panics(src in token_soup()) {
        check_no_panic_and_round_trip(&src)?;
    }
}
