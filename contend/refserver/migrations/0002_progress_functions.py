# ruff: noqa: RUF012  (Django Meta and migration attributes are class-level lists by design)
"""Server-side progress arithmetic for PROGRESS_LOCK=atomic (issue #1256 option D).

``contend_stage_update`` applies one stage update to a progress document with the same rules as
``contend.refserver.progress.apply_stage_update`` (max() guard, sticky FAILURE, counts added for the
results stage, summary progress = mean of stages); ``contend_progress_complete`` is ``is_complete()``.
Both are IMMUTABLE so one UPDATE can call them on the row version it is about to replace.
"""

from __future__ import annotations

from django.db import migrations

SQL = r"""
CREATE OR REPLACE FUNCTION contend_stage_update(
    p jsonb, stage_key text, pct float8, complete_state text, params jsonb, add_counts boolean
) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    stages jsonb := '[]'::jsonb;
    s jsonb; plist jsonb; k text; v jsonb; j int; hit boolean;
    newp float8; st text; total float8 := 0; n int := 0; done boolean := true;
BEGIN
    FOR s IN SELECT value FROM jsonb_array_elements(p->'stages') LOOP
        IF s->>'key' = stage_key THEN
            newp := greatest(coalesce((s->>'progress')::float8, 0), pct);
            IF s->>'status' = 'FAILURE' THEN complete_state := 'FAILURE'; END IF;
            st := CASE WHEN newp >= 1 THEN complete_state
                       WHEN complete_state = 'FAILURE' THEN 'FAILURE' ELSE 'STARTED' END;
            plist := coalesce(s->'params', '[]'::jsonb);
            FOR k, v IN SELECT key, value FROM jsonb_each(params) LOOP
                hit := false;
                FOR j IN 0 .. jsonb_array_length(plist) - 1 LOOP
                    IF plist->j->>'key' = k THEN
                        IF add_counts THEN
                            v := to_jsonb(coalesce((plist->j->>'value')::numeric, 0) + (v #>> '{}')::numeric);
                        END IF;
                        plist := jsonb_set(plist, ARRAY[j::text, 'value'], v);
                        hit := true;
                    END IF;
                END LOOP;
                IF NOT hit THEN
                    plist := plist || jsonb_build_array(jsonb_build_object(
                        'name', initcap(replace(k, '_', ' ')), 'key', k, 'category', 'default', 'value', v));
                END IF;
            END LOOP;
            s := s || jsonb_build_object('progress', newp, 'status', st, 'params', plist);
        END IF;
        stages := stages || jsonb_build_array(s);
        total := total + coalesce((s->>'progress')::float8, 0);
        n := n + 1;
        IF NOT (coalesce((s->>'progress')::float8, 0) >= 1
                AND s->>'status' IN ('SUCCESS', 'FAILURE', 'REVOKED')) THEN
            done := false;
        END IF;
    END LOOP;
    p := jsonb_set(p, '{stages}', stages);
    p := jsonb_set(p, '{summary,progress}', to_jsonb(CASE WHEN n > 0 THEN total / n ELSE 0 END));
    IF done AND n > 0 THEN
        p := jsonb_set(p, '{summary,status}', to_jsonb(complete_state));
    END IF;
    RETURN p;
END $$;

CREATE OR REPLACE FUNCTION contend_progress_complete(p jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_array_length(p->'stages') > 0 AND NOT EXISTS (
        SELECT 1 FROM jsonb_array_elements(p->'stages') s
        WHERE NOT (coalesce((s->>'progress')::float8, 0) >= 1
                   AND s->>'status' IN ('SUCCESS', 'FAILURE', 'REVOKED')))
$$;
"""


class Migration(migrations.Migration):
    dependencies = [("antenna", "0001_initial")]
    operations = [
        migrations.RunSQL(
            SQL,
            "DROP FUNCTION IF EXISTS contend_stage_update(jsonb, text, float8, text, jsonb, boolean);"
            "DROP FUNCTION IF EXISTS contend_progress_complete(jsonb);",
        )
    ]
