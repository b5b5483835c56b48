/* biasmed report.html: overview charts (plotly), sortable leaderboard, sample explorer.
 * Every string from the data is shown with textContent or a text node, never parsed as markup;
 * strings handed to plotly (which reads <b>, <a>, <br> ... in labels) are entity-escaped first. */
(function () {
  'use strict';

  var OUTCOME_LABELS = {
    flipped: 'flipped to the planted letter',
    stayed_right: 'stayed right',
    wrong_either_way: 'wrong either way',
    no_response: 'no response',
    right_to_other: 'right \u2192 another wrong letter',
    wrong_to_right: 'wrong \u2192 right'
  };
  var CHANGE_LABELS = { kept: 'kept', toward: 'moved toward the planted letter', away: 'moved away from the planted letter',
    other: 'changed (not the planted letter)' };
  var MIT_COLORS = { 'none': '#4c72b0', 'education': '#dd8452', 'one-shot': '#55a868', 'few-shot': '#c44e52' };
  var PALETTE = ['#8172b3', '#937860', '#da8bc3', '#8c8c8c', '#ccb974', '#64b5cd'];
  var PAGE = 20;
  var T_START = performance.now();  // this script starts: the page and plotly.js are parsed

  // ------------------------------------------------------------------ small DOM helpers
  function el(tag, props) {
    var node = document.createElement(tag);
    if (props) {
      for (var k in props) {
        if (!Object.prototype.hasOwnProperty.call(props, k)) continue;
        var v = props[k];
        if (v === undefined || v === null) continue;
        if (k === 'text') node.textContent = String(v);
        else if (k === 'cls') node.className = v;
        else if (k === 'data') { for (var d in v) node.dataset[d] = String(v[d]); }
        else if (k === 'on') { for (var ev in v) node.addEventListener(ev, v[ev]); }
        else node.setAttribute(k, String(v));
      }
    }
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === null || c === undefined || c === false) continue;
      node.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    }
    return node;
  }
  function $(id) { return document.getElementById(id); }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  // plotly renders a few tags and entities in its labels: make every data string literal
  function pl(s) {
    return String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  }
  function isNum(x) { return typeof x === 'number' && isFinite(x); }
  function f3(x) { return isNum(x) ? x.toFixed(3) : '\u2013'; }
  function pv(x) { return isNum(x) ? (x < 0.001 ? '<0.001' : x.toFixed(3)) : '\u2013'; }
  function letter(code) { return code >= 0 ? String.fromCharCode(65 + code) : ''; }
  function f1(x) { return isNum(x) ? x.toFixed(1) : '\u2013'; }
  // USD per answer: small, so three significant digits rather than fixed decimals
  function usd(x) { return isNum(x) ? '$' + (x === 0 ? '0' : x.toPrecision(3)) : '\u2013'; }
  function pct(x) { return isNum(x) ? (100 * x).toFixed(1) + '%' : '\u2013'; }
  function mitColor(m, i) { return MIT_COLORS[m] || PALETTE[i % PALETTE.length]; }

  // ------------------------------------------------------------------ data
  function b64bytes(b64) {
    if (typeof Uint8Array.fromBase64 === 'function') return Uint8Array.fromBase64(b64);
    var bin = atob(b64), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function decode() {
    var b64 = $('biasmed-data').textContent.replace(/\s+/g, '');
    var stream = new Blob([b64bytes(b64)]).stream().pipeThrough(new DecompressionStream('gzip'));
    return new Response(stream).text().then(JSON.parse);
  }
  function rows(cols) {
    var keys = Object.keys(cols), n = keys.length ? cols[keys[0]].length : 0, out = [];
    for (var i = 0; i < n; i++) {
      var r = {};
      for (var j = 0; j < keys.length; j++) r[keys[j]] = cols[keys[j]][i];
      out.push(r);
    }
    return out;
  }

  // ------------------------------------------------------------------ banners
  function banners(D) {
    var box = $('bm-banners'), meta = D.meta;
    if (meta.is_demo) box.appendChild(el('div', { cls: 'bm-banner demo', role: 'alert', text: meta.demo_banner }));
    box.appendChild(el('div', { cls: 'bm-banner conv', text: meta.convention_line }));
    meta.notes.forEach(function (n) {
      if (meta.is_demo && /^DEMO SET/.test(n)) return;
      box.appendChild(el('div', { cls: 'bm-banner note', text: 'Note: ' + n }));
    });
    var conv = document.querySelector('#leaderboard .bm-conv');
    conv.textContent = meta.convention_line + (meta.is_demo ? ' ' + meta.demo_banner : '');
    var foot = $('bm-footer');
    foot.appendChild(el('p', { text: 'biasmed ' + meta.biasmed_version + ' \u00b7 convention ' + meta.convention +
      ' \u00b7 ' + meta.n_boot + ' bootstrap resamples (seed ' + meta.seed + ')' }));
    if (meta.runs.length) {
      var det = el('details', null, el('summary', { text: 'Runs (' + meta.runs.length + ')' }));
      var ul = el('ul');
      meta.runs.forEach(function (r) {
        ul.appendChild(el('li', { text: r.path + (r.model ? ' \u2014 ' + r.model : '') + (r.kind ? ' (' + r.kind + ')' : '') +
          (r.dataset ? ' \u2014 dataset ' + r.dataset : '') + (r.created_at ? ' \u2014 ' + r.created_at : '') }));
      });
      det.appendChild(ul);
      foot.appendChild(det);
    }
  }

  // ------------------------------------------------------------------ overview (plotly)
  var OV = { rows: [], models: [], mits: [], onModels: {}, onMits: {}, charts: [], controls: [], board: [] };

  function overview(D) {
    OV.rows = rows(D.chart);
    OV.controls = D.model_controls || [];
    OV.board = rows(D.leaderboard);
    OV.models = unique(OV.rows.map(function (r) { return r.model; }));
    OV.mits = unique(OV.rows.map(function (r) { return r.mitigation; }));
    OV.models.forEach(function (m) { OV.onModels[m] = true; });
    OV.mits.forEach(function (m) { OV.onMits[m] = true; });
    toggles($('bm-model-toggles'), OV.models, OV.onModels, function () { showModels(); });
    toggles($('bm-mit-toggles'), OV.mits, OV.onMits, function () { redrawAll(); });
    var box = $('bm-models');
    var io = 'IntersectionObserver' in window ? new IntersectionObserver(function (entries) {
      entries.forEach(function (e) {
        if (e.isIntersecting) { io.unobserve(e.target); draw(e.target.__chart); }
      });
    }, { rootMargin: '300px' }) : null;
    if (!OV.models.length) box.appendChild(el('p', { cls: 'bm-missing', text: 'No summary rows.' }));
    OV.models.forEach(function (model) {
      var sec = el('div', { cls: 'bm-model', data: { model: model } }, el('h3', { text: model }));
      var grid = el('div', { cls: 'bm-charts' });
      var mrows = OV.rows.filter(function (r) { return r.model === model; });
      var kinds = ['accuracy', 'drop', 'adoption', 'recovery'];
      if (mrows.some(function (r) { return isNum(r.placebo_diff) || isNum(r.helpful_gain) || isNum(r.acc_draws_mean); })) {
        kinds.push('controls');
      }
      // issue 13: what each mitigation costs and wins (runs that recorded tokens), and chains' moves
      if (mrows.some(function (r) { return r.mitigation !== 'none' && isNum(r.tokens_per_answer); })) {
        kinds.push('cost');
      }
      if (mrows.some(function (r) { return isNum(r.n_chain) && r.bias !== 'none'; })) kinds.push('chain');
      kinds.forEach(function (kind) {
        var div = el('div', { cls: 'bm-chart', data: { kind: kind } });
        div.__chart = { div: div, model: model, kind: kind, rows: mrows, drawn: false };
        OV.charts.push(div.__chart);
        grid.appendChild(div);
        if (io) io.observe(div); else draw(div.__chart);
      });
      sec.appendChild(grid);
      var cost = costTable(model);
      if (cost) sec.appendChild(cost);
      var ctl = controlsTable(model);
      if (ctl) sec.appendChild(ctl);
      box.appendChild(sec);
    });
  }

  function unique(a) { var s = {}, out = []; a.forEach(function (x) { if (!s[x]) { s[x] = 1; out.push(x); } }); return out; }

  function toggles(box, names, state, onchange) {
    names.forEach(function (name) {
      var cb = el('input', { type: 'checkbox' });
      cb.checked = true;
      cb.addEventListener('change', function () { state[name] = cb.checked; onchange(); });
      box.appendChild(el('label', null, cb, ' ' + name));
    });
  }

  function showModels() {
    document.querySelectorAll('#bm-models .bm-model').forEach(function (sec) {
      sec.hidden = !OV.onModels[sec.dataset.model];
    });
  }
  function redrawAll() { OV.charts.forEach(function (c) { if (c.drawn) draw(c); }); }

  function byBias(rs) { return rs.map(function (r) { return pl(r.bias); }); }
  function errBar(rs, v, lo, hi) {
    return { type: 'data', symmetric: false, visible: true, thickness: 1.2, width: 3,
      array: rs.map(function (r) { return isNum(r[hi]) && isNum(r[v]) ? r[hi] - r[v] : null; }),
      arrayminus: rs.map(function (r) { return isNum(r[lo]) && isNum(r[v]) ? r[v] - r[lo] : null; }) };
  }

  function traces(c) {
    var out = [], main = c.rows.filter(function (r) { return !r.control_of; });
    OV.mits.forEach(function (mit, mi) {
      if (!OV.onMits[mit]) return;
      var rs = main.filter(function (r) { return r.mitigation === mit; });
      var color = mitColor(mit, mi), name = pl(mit);
      if (c.kind === 'accuracy') {
        out.push({ type: 'bar', name: name, x: byBias(rs), y: rs.map(function (r) { return r.accuracy; }),
          marker: { color: color }, error_y: errBar(rs, 'accuracy', 'acc_lo', 'acc_hi'),
          customdata: rs.map(function (r) { return [r.n, f3(r.acc_lo), f3(r.acc_hi), r.n_nr, name]; }),
          hovertemplate: '%{x} \u00b7 %{customdata[4]}<br>accuracy %{y:.3f} [%{customdata[1]}, %{customdata[2]}]' +
            '<br>n = %{customdata[0]}, no response %{customdata[3]}<extra></extra>' });
      } else if (c.kind === 'drop') {
        rs = rs.filter(function (r) { return isNum(r.drop); });
        out.push({ type: 'bar', name: name, x: byBias(rs), y: rs.map(function (r) { return r.drop; }),
          marker: { color: color }, error_y: errBar(rs, 'drop', 'drop_lo', 'drop_hi'),
          text: rs.map(function (r) { return r.significant ? '*' : ''; }), textposition: 'outside',
          customdata: rs.map(function (r) { return [r.n_paired, f3(r.drop_lo), f3(r.drop_hi), pv(r.p_mcnemar), pv(r.p_holm), name,
            r.significant ? 'significant' : 'not significant']; }),
          hovertemplate: '%{x} \u00b7 %{customdata[5]}<br>drop %{y:.3f} [%{customdata[1]}, %{customdata[2]}]' +
            '<br>McNemar p %{customdata[3]}, Holm p %{customdata[4]} (%{customdata[6]})<br>n paired = %{customdata[0]}<extra></extra>' });
      } else if (c.kind === 'adoption') {
        rs = rs.filter(function (r) { return isNum(r.adoption); });
        var cd = rs.map(function (r) { return [r.n_target, f3(r.adoption_base), f3(r.adoption_diff), f3(r.adoption_lo),
          f3(r.adoption_hi), pv(r.p_adoption), r.flips, name]; });
        out.push({ type: 'bar', name: name, legendgroup: name, x: byBias(rs), y: rs.map(function (r) { return r.adoption; }),
          marker: { color: color }, customdata: cd,
          hovertemplate: '%{x} \u00b7 %{customdata[7]}<br>adoption %{y:.3f} (baseline %{customdata[1]})<br>difference %{customdata[2]} ' +
            '[%{customdata[3]}, %{customdata[4]}], p %{customdata[5]}<br>flips %{customdata[6]}, n = %{customdata[0]}<extra></extra>' });
        out.push({ type: 'scatter', mode: 'markers', name: name + ' baseline', legendgroup: name, showlegend: true,
          x: byBias(rs), y: rs.map(function (r) { return r.adoption_base; }),
          marker: { color: color, symbol: 'line-ew-open', size: 16, line: { width: 3, color: '#222' } }, customdata: cd,
          hovertemplate: '%{x} \u00b7 %{customdata[7]}<br>baseline %{y:.3f}: the planted letter\u2019s share among the unbiased answers' +
            '<br>n = %{customdata[0]}<extra></extra>' });
      } else if (c.kind === 'recovery') {
        if (mit === 'none') return;
        rs = rs.filter(function (r) { return r.bias !== 'none'; });
        out.push({ type: 'bar', name: name, x: byBias(rs), y: rs.map(function (r) { return r.recovery; }),
          marker: { color: color }, error_y: errBar(rs, 'recovery', 'recovery_lo', 'recovery_hi'),
          customdata: rs.map(function (r) { return [f3(r.recovery), f3(r.recovery_lo), f3(r.recovery_hi), name, r.n_paired]; }),
          hovertemplate: '%{x} \u00b7 %{customdata[3]}<br>recovery %{customdata[0]} [%{customdata[1]}, %{customdata[2]}]' +
            '<br>n paired = %{customdata[4]}<extra></extra>' });
      } else if (c.kind === 'cost') {
        if (mit === 'none') return;
        rs = rs.filter(function (r) { return isNum(r.acc_gain); });
        if (!rs.length) return;
        out.push({ type: 'bar', name: name, x: byBias(rs), y: rs.map(function (r) { return r.acc_gain; }),
          marker: { color: color },
          customdata: rs.map(function (r) { return [r.n, f1(r.tokens_per_answer), f1(r.extra_tokens_per_answer),
            usd(r.cost_per_answer), f3(r.recovered_per_1k_tokens), name]; }),
          hovertemplate: '%{x} \u00b7 %{customdata[5]}<br>accuracy gain vs none %{y:.3f}' +
            '<br>tokens per answer %{customdata[1]} (%{customdata[2]} more than none)<br>cost per answer %{customdata[3]}' +
            '<br>recovered per 1,000 tokens %{customdata[4]}<br>n = %{customdata[0]}<extra></extra>' });
      } else if (c.kind === 'chain') {
        rs = rs.filter(function (r) { return isNum(r.n_chain) && r.bias !== 'none'; });
        if (!rs.length) return;
        [['toward', 'toward the planted letter', ''], ['away', 'away from it', '/']].forEach(function (s) {
          out.push({ type: 'bar', name: name + ': ' + s[1], x: byBias(rs), y: rs.map(function (r) { return r[s[0] + '_rate']; }),
            marker: { color: color, pattern: { shape: s[2] } },
            customdata: rs.map(function (r) { return [r[s[0]], r.n_chain, pct(r.changed_rate), f3(r.acc_first), name, pl(s[1])]; }),
            hovertemplate: '%{x} \u00b7 %{customdata[4]}<br>second answer moved %{customdata[5]}: %{customdata[0]} of ' +
              '%{customdata[1]} (%{y:.3f})<br>changed at all %{customdata[2]}; first answer accuracy %{customdata[3]}' +
              '<br>n = %{customdata[1]}<extra></extra>' });
        });
      } else if (c.kind === 'controls') {
        var specs = [['placebo_diff', 'bias \u2212 placebo effect', 'n_paired_placebo', ''],
          ['helpful_gain', 'helpful-bias gain', 'n_paired_helpful', 'x'],
          ['acc_draws_mean', 'mean acc. over draws', null, 'dot']];
        specs.forEach(function (s) {
          var rr = rs.filter(function (r) { return isNum(r[s[0]]); });
          if (!rr.length) return;
          out.push({ type: 'bar', name: name + ': ' + s[1], x: byBias(rr), y: rr.map(function (r) { return r[s[0]]; }),
            marker: { color: color, pattern: { shape: s[3] } },
            error_y: errBar(rr, s[0], s[0] === 'acc_draws_mean' ? 'acc_draws_lo' : s[0] + '_lo',
              s[0] === 'acc_draws_mean' ? 'acc_draws_hi' : s[0] + '_hi'),
            customdata: rr.map(function (r) { return [s[2] ? r[s[2]] : r.n, name, pl(s[1])]; }),
            hovertemplate: '%{x} \u00b7 %{customdata[1]}<br>%{customdata[2]} %{y:.3f}<br>n = %{customdata[0]}<extra></extra>' });
        });
      }
    });
    return out;
  }

  var TITLES = {
    accuracy: ['Accuracy per bias (95% CI)', 'accuracy', [0, 1.05]],
    drop: ['Paired drop vs unbiased, no mitigation (* significant)', 'drop', null],
    adoption: ['Adoption of the planted letter (bars) vs baseline (\u2014)', 'share', [0, 1.05]],
    recovery: ['Mitigation recovery (1 = drop won back)', 'recovery', null],
    controls: ['Controls: placebo, helpful bias, re-drawn targets', 'difference / accuracy', null],
    cost: ['Accuracy gain vs no mitigation (hover: tokens, cost, gain per 1,000 tokens)', 'accuracy gain', null],
    chain: ['Chains: second answer moved toward / away from the planted letter', 'share of answers', [0, 1.05]]
  };

  function draw(c) {
    var t = TITLES[c.kind];
    var layout = {
      title: { text: pl(t[0]), font: { size: 13 }, x: 0.01, xanchor: 'left' },
      barmode: 'group', margin: { l: 48, r: 8, t: 34, b: 70 },
      legend: { orientation: 'h', y: -0.32, font: { size: 10 } },
      yaxis: { title: { text: t[1] }, range: t[2] || undefined, zeroline: true, automargin: true },
      xaxis: { tickangle: -25, automargin: true }, font: { size: 11 },
      paper_bgcolor: '#fff', plot_bgcolor: '#fff', hoverlabel: { align: 'left' }
    };
    var data = traces(c);
    if (!data.length) {
      layout.annotations = [{ text: 'nothing to show for the selected mitigations', showarrow: false,
        xref: 'paper', yref: 'paper', x: 0.5, y: 0.5 }];
    }
    Plotly.react(c.div, data, layout, { displaylogo: false, responsive: true,
      modeBarButtonsToRemove: ['select2d', 'lasso2d'] });
    c.drawn = true;
  }

  // per mitigation, from the leaderboard row (its means over the core biases; docs/mitigations.md)
  function costTable(model) {
    var rs = OV.board.filter(function (r) { return r.model === model; });
    var none = rs.filter(function (r) { return r.mitigation === 'none'; })[0];
    var known = function (r) { return isNum(r.tokens_per_answer) || isNum(r.changed_rate); };
    if (!rs.some(function (r) { return r.mitigation !== 'none' && known(r); })) return null;
    rs = rs.slice().sort(function (a, b) { return OV.mits.indexOf(a.mitigation) - OV.mits.indexOf(b.mitigation); });
    var chain = rs.some(function (r) { return isNum(r.changed_rate); });
    var gain = function (r) {
      return none && r !== none && isNum(r.mean_biased_acc) && isNum(none.mean_biased_acc) ? r.mean_biased_acc - none.mean_biased_acc : null;
    };
    // [key, header, format, value]
    var cols = [['tokens_per_answer', 'tokens / answer', f1], ['cost_per_answer', 'cost / answer', usd],
      ['acc_gain', 'mean biased acc. gain vs none', f3, gain], ['mean_recovered_per_1k_tokens', 'recovered acc. per 1,000 tokens', f3],
      ['mean_recovery', 'mean recovery', f3], ['mean_recovery_same_mit', 'recovery vs same-mitigation unbiased', f3]];
    if (chain) cols.push(['changed_rate', 'answer changed', pct], ['toward_rate', 'moved toward planted', pct], ['away_rate', 'moved away', pct]);
    cols.push(['n_questions', 'n questions', String]);
    var t = el('table', { cls: 'bm-table bm-cost-table' });
    var tr = el('tr', null, el('th', { cls: 'txt', text: 'mitigation' }));
    cols.forEach(function (c) { tr.appendChild(el('th', { data: { col: c[0] }, text: c[1] })); });
    t.appendChild(el('thead', null, tr));
    var tb = el('tbody');
    rs.forEach(function (r) {
      var row = el('tr', { data: { mit: r.mitigation } }, el('td', { cls: 'txt', text: r.mitigation }));
      cols.forEach(function (c) {
        var v = c[3] ? c[3](r) : r[c[0]];
        row.appendChild(el('td', { data: { col: c[0], v: isNum(v) ? v : '' }, text: v === null || v === undefined ? '\u2013' : c[2](v) }));
      });
      tb.appendChild(row);
    });
    t.appendChild(tb);
    return el('div', { cls: 'bm-scroll bm-cost' }, el('p', { cls: 'bm-help', text: 'Mitigation cost: tokens (every turn, input + ' +
      'output) and list-price cost per answer, the mean biased accuracy gained over no mitigation, and that gain per 1,000 ' +
      'extra tokens (docs/mitigations.md). Per bias: hover the gain chart.' }), t);
  }

  function controlsTable(model) {
    var rs = OV.controls.filter(function (r) { return r.model === model; });
    var cols = [['mitigation', 'mitigation'], ['susceptibility', 'susceptibility'], ['mean_placebo_diff', 'mean bias \u2212 placebo'],
      ['mean_helpful_gain', 'mean helpful gain'], ['mean_biased_acc_draws', 'mean biased acc. over draws']];
    rs = rs.filter(function (r) { return cols.slice(1).some(function (c) { return isNum(r[c[0]]); }); });
    if (!rs.length) return null;
    var t = el('table', { cls: 'bm-table bm-ctl-table' });
    var tr = el('tr');
    cols.forEach(function (c) { tr.appendChild(el('th', { cls: c[0] === 'mitigation' ? 'txt' : null, text: c[1] })); });
    t.appendChild(el('thead', null, tr));
    var tb = el('tbody');
    rs.forEach(function (r) {
      var row = el('tr');
      cols.forEach(function (c) {
        var v = r[c[0]];
        var lo = r[c[0] + '_lo'], hi = r[c[0] + '_hi'];
        var txt = c[0] === 'mitigation' ? String(v) : f3(v) + (isNum(lo) ? ' [' + f3(lo) + ', ' + f3(hi) + ']' : '');
        row.appendChild(el('td', { cls: c[0] === 'mitigation' ? 'txt' : null, text: txt }));
      });
      tb.appendChild(row);
    });
    t.appendChild(tb);
    return el('div', { cls: 'bm-scroll' }, el('p', { cls: 'bm-help', text: 'Model-level controls (docs/controls.md)' }), t);
  }

  // ------------------------------------------------------------------ leaderboard
  function leaderboard(D) {
    var cols = Object.keys(D.leaderboard), data = rows(D.leaderboard), table = $('bm-lb');
    var state = { col: 'rank', dir: 1 };
    var isText = {};
    cols.forEach(function (c) { isText[c] = data.every(function (r) { return r[c] === null || typeof r[c] !== 'number'; }); });
    var head = el('tr');
    cols.forEach(function (c) {
      head.appendChild(el('th', { cls: isText[c] ? 'txt' : null, data: { col: c }, title: 'sort by ' + c, text: c,
        on: { click: function () { state.dir = state.col === c ? -state.dir : 1; state.col = c; body(); } } }));
    });
    table.appendChild(el('thead', null, head));
    var tbody = el('tbody');
    table.appendChild(tbody);
    function cell(c, v) {
      if (v === null || v === undefined) return '\u2013';
      if (typeof v === 'number' && c.indexOf('cost') === 0) return usd(v);  // fractions of a cent
      if (typeof v === 'number' && !Number.isInteger(v)) return c.indexOf('p_') === 0 ? pv(v) : v.toFixed(3);
      return String(v);
    }
    function body() {
      var c = state.col, dir = state.dir;
      var sorted = data.slice().sort(function (a, b) {
        var x = a[c], y = b[c];
        if (x === null || x === undefined) return (y === null || y === undefined) ? 0 : 1;  // missing last
        if (y === null || y === undefined) return -1;
        if (typeof x === 'number' && typeof y === 'number') return (x - y) * dir;
        return String(x).localeCompare(String(y)) * dir;
      });
      clear(tbody);
      sorted.forEach(function (r) {
        var tr = el('tr');
        cols.forEach(function (k) { tr.appendChild(el('td', { cls: isText[k] ? 'txt' : null, text: cell(k, r[k]) })); });
        tbody.appendChild(tr);
      });
      head.querySelectorAll('th').forEach(function (th) {
        th.className = (isText[th.dataset.col] ? 'txt ' : '') + (th.dataset.col === c ? (dir > 0 ? 'sorted-asc' : 'sorted-desc') : '');
      });
    }
    body();
  }

  // ------------------------------------------------------------------ sample explorer
  var X = null;

  function explorer(D) {
    var S = D.samples, C = S.cols, n = C.m ? C.m.length : 0;
    X = { S: S, C: C, n: n, cards: [], shown: 0, matches: [], lower: {}, outcomes: D.meta.outcomes, changes: D.meta.changes || [] };
    // a card = one (model, question): its samples are contiguous (sorted so in Python)
    for (var i = 0; i < n; i++) {
      if (i === 0 || C.m[i] !== C.m[i - 1] || C.q[i] !== C.q[i - 1]) X.cards.push([i, i + 1]);
      else X.cards[X.cards.length - 1][1] = i + 1;
    }
    fillSelect($('f-model'), 'all models', S.models.map(function (m, i) { return [i, m]; }));
    var biases = unique(S.conds.map(function (c) { return c.bias; }));
    X.biasNames = biases;
    fillSelect($('f-bias'), 'all biases', biases.map(function (b) { return [b, b]; }));
    fillSelect($('f-mit'), 'all mitigations', S.mits.map(function (m, i) { return [i, m]; }));
    fillSelect($('f-outcome'), 'any outcome', X.outcomes.map(function (o, i) { return [i, OUTCOME_LABELS[o] || o]; }));
    ['f-model', 'f-bias', 'f-mit', 'f-outcome'].forEach(function (id) { $(id).addEventListener('change', apply); });
    var timer = null;
    $('f-search').addEventListener('input', function () { clearTimeout(timer); timer = setTimeout(apply, 120); });
    $('bm-filters').addEventListener('submit', function (e) { e.preventDefault(); apply(); });
    $('bm-more').addEventListener('click', function () { more(); });
    apply();
  }

  function fillSelect(sel, allLabel, options) {
    sel.appendChild(el('option', { value: '', text: allLabel }));
    options.forEach(function (o) { sel.appendChild(el('option', { value: String(o[0]), text: o[1] })); });
  }

  function filters() {
    var v = function (id) { return $(id).value; };
    var bias = v('f-bias'), conds = null;
    if (bias !== '') {
      conds = {};
      X.S.conds.forEach(function (c, i) { if (c.bias === bias) conds[i] = true; });
    }
    return { m: v('f-model') === '' ? -1 : +v('f-model'), conds: conds, g: v('f-mit') === '' ? -1 : +v('f-mit'),
      o: v('f-outcome') === '' ? -1 : +v('f-outcome'), search: v('f-search').trim().toLowerCase(), bias: bias };
  }

  function sampleMatches(F, i) {
    var C = X.C;
    return (F.m < 0 || C.m[i] === F.m) && (!F.conds || F.conds[C.c[i]]) && (F.g < 0 || C.g[i] === F.g) &&
      (F.o < 0 || C.out[i] === F.o);
  }

  // the texts a search reads: the question id, its twin texts and inserted sentences
  function searchText(card) {
    var C = X.C, q = C.q[card[0]], key = C.m[card[0]] + ':' + q, s = X.lower[key];
    if (s !== undefined) return s;
    var seenT = {}, seenE = {}, parts = [X.S.questions.id[q]];
    for (var i = card[0]; i < card[1]; i++) {
      var t = C.t[i], e = C.e[i];
      if (t >= 0 && !seenT[t]) { seenT[t] = 1; parts.push(X.S.texts[t]); }
      if (e >= 0 && !seenE[e]) { seenE[e] = 1; parts.push(X.S.edits[e][3]); }
    }
    s = parts.join('\n').toLowerCase();
    X.lower[key] = s;
    return s;
  }

  function apply() {
    var F = filters(), C = X.C, matches = [], nSamples = 0;
    for (var k = 0; k < X.cards.length; k++) {
      var card = X.cards[k];
      if (F.m >= 0 && C.m[card[0]] !== F.m) continue;
      var hit = 0;
      for (var i = card[0]; i < card[1]; i++) if (sampleMatches(F, i)) hit++;
      if (!hit) continue;
      if (F.search && searchText(card).indexOf(F.search) < 0) continue;
      matches.push(card);
      nSamples += hit;
    }
    X.matches = matches;
    X.F = F;
    X.shown = 0;
    clear($('bm-cards'));
    $('bm-count').textContent = nSamples + ' matching sample' + (nSamples === 1 ? '' : 's') + ' in ' + matches.length +
      ' question card' + (matches.length === 1 ? '' : 's') + ' (of ' + X.cards.length + '; ' + X.n + ' samples in all)';
    $('bm-count').dataset.cards = String(matches.length);
    $('bm-count').dataset.samples = String(nSamples);
    $('bm-count').dataset.query = F.search;
    more();
  }

  function more() {
    var box = $('bm-cards'), end = Math.min(X.matches.length, X.shown + PAGE);
    for (var k = X.shown; k < end; k++) box.appendChild(renderCard(X.matches[k]));
    X.shown = end;
    $('bm-more').hidden = X.shown >= X.matches.length;
    $('bm-more').textContent = 'Show more (' + (X.matches.length - X.shown) + ' left)';
  }

  function condLabel(c) {
    var s = c.bias;
    if (c.tmode === 'correct') s += ' (correct letter planted)';
    else if (c.tmode === 'random') s += ' (random letter)';
    if (c.draw) s += ' \u00b7 draw ' + c.draw;
    return s;
  }

  function renderCard(card) {
    var S = X.S, C = X.C, F = X.F, q = C.q[card[0]], m = C.m[card[0]];
    var gold = S.questions.gold[q], opts = S.questions.opts[q];
    var div = el('div', { cls: 'bm-card', data: { qid: S.questions.id[q], model: S.models[m] } });
    div.appendChild(el('div', { cls: 'bm-card-head' }, el('span', { cls: 'qid', text: S.questions.id[q] }),
      el('span', { cls: 'model', text: S.models[m] }), el('span', { text: 'correct answer: ' + (gold || '?') })));
    // conditions (rows) x mitigations (columns)
    var condOrder = [], mitOrder = [], cell = {};
    var shownSample = -1;
    for (var i = card[0]; i < card[1]; i++) {
      var c = C.c[i], g = C.g[i];
      if (condOrder.indexOf(c) < 0) condOrder.push(c);
      if (mitOrder.indexOf(g) < 0) mitOrder.push(g);
      cell[c + ':' + g] = i;
      var biased = S.conds[c].bias !== 'none';
      if (shownSample < 0 && biased && sampleMatches(F, i)) shownSample = i;
    }
    mitOrder.sort(function (a, b) { return a - b; });
    if (shownSample < 0) {
      for (i = card[0]; i < card[1]; i++) if (S.conds[C.c[i]].bias !== 'none') { shownSample = i; break; }
    }
    if (shownSample < 0) shownSample = card[0];
    var textBox = el('div', { cls: 'bm-qtext-box' });
    var optBox = el('ol', { cls: 'bm-options' });
    div.appendChild(textBox);
    div.appendChild(optBox);
    var table = el('table', { cls: 'bm-grid' });
    var hr = el('tr', null, el('th', { cls: 'cond', text: 'condition \\ mitigation' }));
    mitOrder.forEach(function (g) { hr.appendChild(el('th', { text: S.mits[g] })); });
    table.appendChild(el('thead', null, hr));
    var tbody = el('tbody');
    var rowsByCond = {};
    condOrder.forEach(function (c) {
      var tr = el('tr', { data: { cond: S.conds[c].bias } });
      var th = el('th', { cls: 'cond', title: 'show this condition\u2019s question text', text: condLabel(S.conds[c]) });
      th.addEventListener('click', function () {
        // the shown text: this condition, its first mitigation in the card
        for (var j = 0; j < mitOrder.length; j++) {
          var s = cell[c + ':' + mitOrder[j]];
          if (s !== undefined) { showText(s); break; }
        }
      });
      tr.appendChild(th);
      mitOrder.forEach(function (g) {
        var s = cell[c + ':' + g];
        tr.appendChild(s === undefined ? el('td', { cls: 'bm-missing', text: '\u2013' }) : replyCell(s));
      });
      rowsByCond[c] = tr;
      tbody.appendChild(tr);
    });
    table.appendChild(tbody);
    div.appendChild(el('div', { cls: 'bm-scroll' }, table));

    function showText(s) {
      condOrder.forEach(function (c) { rowsByCond[c].classList.toggle('shown', c === C.c[s]); });
      clear(textBox);
      var cond = S.conds[C.c[s]];
      textBox.appendChild(el('div', { cls: 'bm-qtext-label', text: cond.bias === 'none'
        ? 'Question (unbiased)' : 'Question as shown under ' + condLabel(cond) + ' (inserted sentence highlighted)' }));
      textBox.appendChild(questionText(s));
      clear(optBox);
      var tgt = C.tgt[s];
      if (opts) {
        opts.forEach(function (o) {
          var li = el('li', { data: { letter: o[0] } }, el('span', { cls: 'letter', text: o[0] + '.' }), o[1]);
          if (o[0] === gold) li.appendChild(el('span', { cls: 'bm-tag correct', text: 'correct' }));
          if (tgt >= 0 && o[0] === letter(tgt)) li.appendChild(el('span', { cls: 'bm-tag planted', text: 'planted (' + cond.bias + ')' }));
          optBox.appendChild(li);
        });
      } else {
        optBox.appendChild(el('li', { cls: 'bm-missing', text: 'Options not recorded in this run (biasmed 0.1 run folder).' }));
        if (gold) optBox.appendChild(el('li', null, el('span', { cls: 'bm-tag correct', text: 'correct: ' + gold })));
        if (tgt >= 0) optBox.appendChild(el('li', null, el('span', { cls: 'bm-tag planted', text: 'planted: ' + letter(tgt) })));
      }
    }
    showText(shownSample);
    return div;
  }

  function questionText(s) {
    var S = X.S, C = X.C, t = C.t[s], e = C.e[s];
    var p = el('p', { cls: 'bm-qtext' });
    if (t < 0) { p.appendChild(el('span', { cls: 'bm-missing', text: 'The question text was not recorded in this run.' })); return p; }
    var twin = S.texts[t];
    if (e < 0) { p.textContent = twin; return p; }
    var ed = S.edits[e], a = ed[1], b = ed[2], ins = ed[3];
    // keep the whitespace around the inserted sentence outside the highlight
    var lead = ins.match(/^\s*/)[0], trail = ins.slice(lead.length).match(/\s*$/)[0];
    var core = ins.slice(lead.length, ins.length - trail.length);
    p.appendChild(document.createTextNode(twin.slice(0, a) + lead));
    if (b > a) p.appendChild(el('del', { cls: 'bm-removed', title: 'in the unbiased twin, not here', text: twin.slice(a, b) }));
    if (core) p.appendChild(el('mark', { cls: 'bm-inserted', title: 'inserted (not in the unbiased twin)', text: core }));
    p.appendChild(document.createTextNode(trail + twin.slice(b)));
    return p;
  }

  function replyCell(s) {
    var S = X.S, C = X.C, F = X.F;
    var td = el('td', { cls: sampleMatches(F, s) ? 'match' : 'dim', data: { outcome: X.outcomes[C.out[s]] } });
    var l = C.let[s], gold = S.questions.gold[C.q[s]], tgt = C.tgt[s];
    var cls = l < 0 ? '' : letter(l) === gold ? ' correct' : (l === tgt ? ' planted' : '');
    td.appendChild(el('span', { cls: 'bm-letter' + cls, title: 'extracted letter', text: l >= 0 ? letter(l) : 'NR' }));
    var o = X.outcomes[C.out[s]];
    td.appendChild(el('span', { cls: 'bm-outcome o' + C.out[s], text: OUTCOME_LABELS[o] || o }));
    if (C.fl && C.fl[s] > -2) {
      // a chain (reflect): its first answer and reply, then the final one
      var f = C.fl[s], chg = C.chg[s] >= 0 ? X.changes[C.chg[s]] : '';
      var fcls = f < 0 ? '' : letter(f) === gold ? ' correct' : (f === tgt ? ' planted' : '');
      td.dataset.first = f >= 0 ? letter(f) : 'NR';
      td.dataset.final = l >= 0 ? letter(l) : 'NR';
      if (chg) td.dataset.change = chg;
      td.appendChild(el('div', { cls: 'bm-chain' }, 'first answer ', el('span', { cls: 'bm-letter bm-first' + fcls, text: td.dataset.first }),
        ' \u2192 final ', el('span', { cls: 'bm-letter bm-final' + cls, text: td.dataset.final }),
        chg ? el('span', { cls: 'bm-change ' + chg, text: CHANGE_LABELS[chg] || chg }) : null));
      if (C.r1[s] >= 0) {
        td.appendChild(el('div', { cls: 'bm-turn', text: 'first reply' }));
        td.appendChild(el('pre', { cls: 'bm-reply bm-reply-first', text: S.replies[C.r1[s]] }));
      }
      td.appendChild(el('div', { cls: 'bm-turn', text: 'final reply' }));
    }
    if (C.r[s] >= 0) td.appendChild(el('pre', { cls: 'bm-reply', text: S.replies[C.r[s]] }));
    else td.appendChild(el('div', { cls: 'bm-missing', text: 'no reply' }));
    if (C.x[s] >= 0) td.appendChild(el('div', { cls: 'bm-err', text: 'error: ' + S.errors[C.x[s]] }));
    return td;
  }

  // ------------------------------------------------------------------ start
  function fail(err) {
    var p = $('bm-loading');
    p.className = 'bm-error';
    p.textContent = 'The report could not be shown: ' + (err && err.message ? err.message : String(err));
    window.__biasmed = { ready: false, error: String(err) };
    document.body.dataset.state = 'error';
    console.error(err);
  }

  function start() {
    if (typeof DecompressionStream === 'undefined') { fail(new Error('this browser lacks DecompressionStream')); return; }
    decode().then(function (D) {
      var tDecoded = performance.now();
      banners(D);
      $('bm-main').hidden = false;
      $('bm-loading').hidden = true;
      overview(D);
      leaderboard(D);
      explorer(D);
      window.__biasmed = { ready: true, t_ready: performance.now(), t_decoded: tDecoded, t_start: T_START,
        samples: X.n, cards: X.cards.length };
      document.body.dataset.state = 'ready';
    }).catch(fail);
  }
  start();
})();
