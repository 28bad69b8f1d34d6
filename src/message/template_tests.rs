//! Table tests for templates: variables, conditionals, loops, filters, escaping, the header
//! context, limits and error naming.

use super::*;

fn ctx(v: serde_json::Value) -> Value {
    Value::from(minijinja::value::Serde(v))
}

fn compile(pairs: &[(&str, &str)]) -> Result<Templates, CompileError> {
    Templates::compile(
        pairs.iter().map(|(f, s)| (f.to_string(), *s)),
        TemplateLimits::default(),
    )
}

#[test]
fn renders_variables_conditionals_loops_and_filters() {
    let t = compile(&[
        (
            TEXT,
            "Hi {{ first_name | title }}{% if coupon %}, code {{ coupon }}{% endif %}!\n\
             {% for p in products %}- {{ p.name }}: {{ \"%.2f\" | format(p.price) }}\n{% endfor %}",
        ),
        (HTML, "<p>{{ first_name }}</p>{{ banner | safe }}"),
    ])
    .unwrap();
    let table = [
        (
            serde_json::json!({"first_name": "ada", "products": [{"name": "A", "price": 1.5}, {"name": "B", "price": 2}]}),
            "Hi Ada!\n- A: 1.50\n- B: 2.00\n",
        ),
        (
            serde_json::json!({"first_name": "bo", "coupon": "X1", "products": []}),
            "Hi Bo, code X1!\n",
        ),
    ];
    for (data, want) in table {
        assert_eq!(t.render(TEXT, &ctx(data)).unwrap().unwrap(), want);
    }
    let html = t
        .render(
            HTML,
            &ctx(serde_json::json!({"first_name": "<script>&", "banner": "<b>ok</b>"})),
        )
        .unwrap()
        .unwrap();
    assert_eq!(
        html, "<p>&lt;script&gt;&amp;</p><b>ok</b>",
        "escaped unless marked safe"
    );
}

#[test]
fn a_missing_variable_names_itself_and_its_line() {
    let t = compile(&[(TEXT, "line one\nHi {{ first_name }}\n{{ product.price }}")]).unwrap();
    let table = [
        (serde_json::json!({}), "first_name", 2),
        (
            serde_json::json!({"first_name": "A", "product": {}}),
            "product.price",
            3,
        ),
    ];
    for (data, var, line) in table {
        match t.render(TEXT, &ctx(data)) {
            Err(RenderError::Undefined {
                variable,
                line: l,
                field,
            }) => {
                assert_eq!((variable.as_str(), l, field.as_str()), (var, line, TEXT));
            }
            other => panic!("expected undefined {var}, got {other:?}"),
        }
    }
    let e = t.render(TEXT, &ctx(serde_json::json!({}))).unwrap_err();
    assert!(e.to_string().contains("`first_name`"), "{e}");
}

#[test]
fn syntax_errors_name_the_field_and_line() {
    let table = [
        ((HTML, "<p>\n<p>\n{% if x %}"), HTML, 3),
        ((SUBJECT, "{{ }}"), SUBJECT, 1),
        ((TEXT, "a\nb\n{% for %}\n"), TEXT, 3),
    ];
    for ((field, src), want_field, want_line) in table {
        match compile(&[(field, src)]) {
            Err(CompileError::Syntax { field, line, .. }) => {
                assert_eq!((field.as_str(), line), (want_field, want_line), "{src:?}")
            }
            other => panic!("{src:?}: {other:?}"),
        }
    }
}

#[test]
fn template_size_and_fuel_are_bounded() {
    let big = "x".repeat(300 * 1024);
    let e = compile(&[(HTML, &big)]).unwrap_err();
    assert!(e.to_string().contains("262144"), "{e}");
    let t = compile(&[(
        TEXT,
        "{% for i in range(10000) %}{% for j in range(10000) %}{{ j }}{% endfor %}{% endfor %}",
    )])
    .unwrap();
    assert!(matches!(
        t.render(TEXT, &ctx(serde_json::json!({}))),
        Err(RenderError::OutOfFuel { .. })
    ));
}

#[test]
fn header_context_refuses_line_breaks_controls_and_encoded_words() {
    let t = compile(&[
        (SUBJECT, "Hello {{ v }}"),
        ("headers.X-Tag", "{{ v }}"),
        (TEXT, "{{ v }}"),
        (CONTENT_HEADERS, "From: a@b\r\nSubject: {{ v }}\r\n"),
    ])
    .unwrap();
    let bad = [
        "x\r\nBcc: evil@example.com",
        "x\nBcc: evil@example.com",
        "x\rBcc: evil@example.com",
        "x\0y",
        "bell\x07",
        "=?utf-8?q?x=0D=0ABcc:_evil@example.com?=",
        "=?UTF-8?B?eA0KQmNjOiBldmlsQGV4YW1wbGUuY29t?=",
    ];
    for v in bad {
        for field in [SUBJECT, "headers.X-Tag", CONTENT_HEADERS] {
            match t.render(field, &ctx(serde_json::json!({ "v": v }))) {
                Err(RenderError::HeaderUnsafe { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field} with {v:?}: {other:?}"),
            }
        }
        // The body is not header context: line breaks are fine there.
        assert!(t.render(TEXT, &ctx(serde_json::json!({ "v": v }))).is_ok());
    }
    for ok in ["plain", "Ünïcødé ☃", "tab\tin", "50% =? off", "a ?= b"] {
        let s = t
            .render(SUBJECT, &ctx(serde_json::json!({ "v": ok })))
            .unwrap()
            .unwrap();
        assert_eq!(s, format!("Hello {ok}"));
    }
}

#[test]
fn content_splits_at_the_first_blank_line() {
    let table = [
        (
            "A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore",
            ("A: 1\r\nB: 2\r\n", "body\r\n\r\nmore"),
        ),
        ("A: 1\nB: 2\n\nbody\n", ("A: 1\nB: 2\n", "body\n")),
        ("A: 1\r\n", ("A: 1\r\n", "")),
    ];
    for (src, want) in table {
        assert_eq!(split_content(src), want, "{src:?}");
    }
}
