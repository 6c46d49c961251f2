#include "llama-kv-evict-state.h"

#include "llama-impl.h"
#include "llama-batch.h"
#include "llama-context.h"
#include "llama-hparams.h"
#include "llama-kv-cache.h"
#include "llama-kv-cache-iswa.h"
#include "llama-memory-hybrid.h"
#include "llama-memory-hybrid-iswa.h"
#include "llama-model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

//
// llama_kv_evict_state
//

llama_kv_evict_state::llama_kv_evict_state(llama_kv_cache & kv, const llama_kv_evict_params & params) :
    kv(kv), params(params) {}

llama_kv_evict_state::~llama_kv_evict_state() = default;

std::unique_ptr<llama_kv_evict_state> llama_kv_evict_state::create(
        llama_kv_cache & kv,
        const llama_hparams  & hparams,
        const llama_kv_evict_params & params,
        uint32_t n_seq_max,
        bool     flash_attn,
        int32_t & err,
        std::string & msg) {
    std::unique_ptr<llama_kv_evict_state> st(new llama_kv_evict_state(kv, params));

    st->n_seq_max = n_seq_max;
    st->n_stream  = kv.get_n_stream();
    st->kv_size   = kv.get_size();
    st->type_bias = flash_attn ? GGML_TYPE_F16 : GGML_TYPE_F32;
    st->flash_attn = flash_attn;

    if (params.mode == LLAMA_KV_EVICT_MODE_COMPACT) {
        if (hparams.attn_soft_cap || hparams.use_alibi) {
            err = LLAMA_KV_EVICT_ERR_UNSUPPORTED;
            msg = std::string("COMPACT mode does not support ") +
                  (hparams.attn_soft_cap ? "attention logit soft-capping" : "ALiBi") +
                  " (the per-head pool attention has no soft-cap / bias term)";
            return nullptr;
        }
    }
    if (hparams.is_mla()) {
        err = LLAMA_KV_EVICT_ERR_UNSUPPORTED;
        msg = "MLA attention (compressed KV) is not supported";
        return nullptr;
    }

    const auto layer_ids = kv.get_layer_ids();
    if (layer_ids.empty()) {
        err = LLAMA_KV_EVICT_ERR_UNSUPPORTED;
        msg = "the KV cache has no layer to evict (sliding-window layers keep their window)";
        return nullptr;
    }
    st->type_v = kv.type_v(); // of layer 0: needs a layer

    for (const uint32_t il : layer_ids) {
        ggml_tensor * k = kv.get_k_storage(il);
        if (k == nullptr || k->buffer == nullptr || !ggml_backend_buffer_is_host(k->buffer)) {
            err = LLAMA_KV_EVICT_ERR_UNSUPPORTED;
            msg = "layer " + std::to_string(il) + ": K storage is not in host memory (offloaded KV cache); "
                  "per-head eviction supports the CPU backend only";
            return nullptr;
        }
        if (st->layer_index.count((int32_t) il)) {
            continue; // a layer reusing another layer's storage
        }
        ggml_tensor * v = kv.get_v_storage(il);
        if (v == nullptr || v->buffer == nullptr || !ggml_backend_buffer_is_host(v->buffer)) {
            err = LLAMA_KV_EVICT_ERR_UNSUPPORTED;
            msg = "layer " + std::to_string(il) + ": V storage is not in host memory (offloaded KV cache) or absent; "
                  "per-head eviction supports the CPU backend only";
            return nullptr;
        }

        layer_info li;
        li.il            = (int32_t) il;
        li.n_head        = (int32_t) hparams.n_head(il);
        li.n_head_kv     = (int32_t) hparams.n_head_kv(il);
        li.n_embd_head_k = (int32_t) hparams.n_embd_head_k(il);
        li.n_embd_head_v = (int32_t) hparams.n_embd_head_v(il);
        li.k             = k;

        if (li.n_head_kv <= 0 || li.n_head % li.n_head_kv != 0) {
            err = LLAMA_KV_EVICT_ERR_UNSUPPORTED;
            msg = "layer " + std::to_string(il) + ": n_head is not a multiple of n_head_kv";
            return nullptr;
        }
        if (st->n_head == 0) {
            st->n_head = li.n_head;
        } else if ((int32_t) st->n_head != li.n_head) {
            err = LLAMA_KV_EVICT_ERR_UNSUPPORTED;
            msg = "the number of query heads differs between layers";
            return nullptr;
        }
        if ((int64_t) k->ne[0] != (int64_t) li.n_head_kv * li.n_embd_head_k) {
            err = LLAMA_KV_EVICT_ERR_UNSUPPORTED;
            msg = "layer " + std::to_string(il) + ": unexpected K storage layout (MLA or padded heads)";
            return nullptr;
        }

        st->layer_index[li.il] = st->layers.size();
        st->layers.push_back(std::move(li));
    }

    // layers without K/V of their own (Gemma 3n / 4: the last layers read the cache of the last full-attention
    // layer before them): they attend the entries their source layer keeps (its mask, its pools)
    for (uint32_t il = 0; il < hparams.n_layer(); ++il) {
        if (hparams.has_kv(il) || hparams.is_swa(il) || st->layer_index.count((int32_t) il)) {
            continue;
        }
        ggml_tensor * k = nullptr;
        try {
            k = kv.get_k_storage((int32_t) il);
        } catch (const std::out_of_range &) {
            k = nullptr;
        }
        const layer_info * src = nullptr;
        for (const auto & li : st->layers) {
            if (li.k == k) {
                src = &li;
            }
        }
        if (src == nullptr || (int32_t) hparams.n_head(il) != src->n_head ||
                (int32_t) hparams.n_head_kv(il) != src->n_head_kv ||
                (int32_t) hparams.n_embd_head_k(il) != src->n_embd_head_k ||
                (int32_t) hparams.n_embd_head_v(il) != src->n_embd_head_v) {
            err = LLAMA_KV_EVICT_ERR_UNSUPPORTED;
            msg = "layer " + std::to_string(il) + " shares KV with another layer whose cache or head layout it "
                  "does not match";
            return nullptr;
        }
        st->shared_index[(int32_t) il] = st->layer_index.at(src->il);
    }

    const bool mask_mode = params.mode == LLAMA_KV_EVICT_MODE_MASK;
    const int64_t n_rows = (int64_t) n_seq_max * params.n_window + 1;

    ggml_init_params ip = {
        /*.mem_size   =*/ 2*st->layers.size()*ggml_tensor_overhead() + 1024,
        /*.mem_buffer =*/ nullptr,
        /*.no_alloc   =*/ true,
    };
    st->ctx.reset(ggml_init(ip));
    if (!st->ctx) {
        err = LLAMA_KV_EVICT_ERR_UNSUPPORTED;
        msg = "failed to create a ggml context";
        return nullptr;
    }

    for (auto & li : st->layers) {
        li.ring = ggml_new_tensor_2d(st->ctx.get(), GGML_TYPE_F32, (int64_t) li.n_head*li.n_embd_head_k, n_rows);
        ggml_format_name(li.ring, "evict_q_l%d", li.il);
        if (mask_mode) {
            li.bias = ggml_new_tensor_4d(st->ctx.get(), st->type_bias, st->kv_size, 1, li.n_head, st->n_stream);
            ggml_format_name(li.bias, "evict_bias_l%d", li.il);
            li.evicted.assign((size_t) st->n_stream*st->kv_size*li.n_head_kv, 0);
        }
    }

    st->buf.reset(ggml_backend_alloc_ctx_tensors_from_buft(st->ctx.get(), ggml_backend_cpu_buffer_type()));
    if (!st->buf) {
        err = LLAMA_KV_EVICT_ERR_UNSUPPORTED;
        msg = "failed to allocate the query rings";
        return nullptr;
    }
    ggml_backend_buffer_clear(st->buf.get(), 0);

    LLAMA_LOG_INFO("%s: per-head eviction: %zu layers (+ %zu sharing their KV), window %d, mode %s, %.2f MiB\n",
            __func__, st->layers.size(), st->shared_index.size(), params.n_window, mask_mode ? "mask" : "compact",
            ggml_backend_buffer_get_size(st->buf.get())/1024.0/1024.0);

    st->rings.assign(n_seq_max, std::vector<ring_slot>(params.n_window));
    st->n_captured.assign(n_seq_max, 0);
    st->cell_dirty.assign((size_t) st->n_stream*st->kv_size, 0);
    st->seq_evicted.assign(n_seq_max, 0);
    st->seqs.resize(n_seq_max);

    err = LLAMA_KV_EVICT_OK;
    return st;
}

uint32_t llama_kv_evict_state::mask_n_head() const {
    return params.mode == LLAMA_KV_EVICT_MODE_MASK ? n_head : 1;
}

uint32_t llama_kv_evict_state::graph_nodes() const {
    // per layer: capture (cont, reshape, set_rows), mask add (view, add); COMPACT: 3 conts, and per compacted
    // sequence of the ubatch (at most n_seq_max) the gather of its q/k/v rows (3 x reshape, get_rows, reshape),
    // the store (view, 2 reshape, 2 set_rows), the final reshape, join (concat) and per KV head at most 16 tensors
    // (4 views, the mask's cont, permute, 2 casts + flash attention, or V^T's store (2 views, transpose, cpy) +
    // mul_mat + soft_max + mul_mat + permute + cont, concat), plus the scatter (get_rows); doubled for safety
    const uint32_t n_group = params.mode == LLAMA_KV_EVICT_MODE_COMPACT ? n_seq_max : 0;
    uint32_t n = 64;
    for (const auto & li : layers) {
        n += 2*(16 + n_group*(24 + 16*(uint32_t) li.n_head_kv));
    }
    for (const auto & sh : shared_index) {
        n += 2*(16 + n_group*(24 + 16*(uint32_t) layers[sh.second].n_head_kv));
    }
    return n;
}

bool llama_kv_evict_state::has_layer(int32_t il) const {
    return layer_index.count(il) != 0 || shared_index.count(il) != 0;
}

int32_t llama_kv_evict_state::source_layer(int32_t il) const {
    const auto it = shared_index.find(il);
    return it == shared_index.end() ? il : layers[it->second].il;
}

ggml_tensor * llama_kv_evict_state::build_capture(
        ggml_context * ctx, ggml_tensor * q_cur, ggml_tensor * q_idxs, int32_t il, float kq_scale) {
    auto & li = layers[layer_index.at(il)];

    li.kq_scale = kq_scale;

    GGML_ASSERT(q_cur->type == GGML_TYPE_F32);
    GGML_ASSERT(q_cur->ne[0]*q_cur->ne[1] == li.ring->ne[0]);

    ggml_tensor * q = q_cur;
    if (!ggml_is_contiguous(q)) {
        q = ggml_cont(ctx, q);
    }
    q = ggml_reshape_2d(ctx, q, q->ne[0]*q->ne[1], q->ne[2]*q->ne[3]);

    return ggml_set_rows(ctx, li.ring, q, q_idxs);
}

ggml_tensor * llama_kv_evict_state::build_layer_mask(ggml_context * ctx, ggml_tensor * kq_mask, int32_t il, uint32_t s0) const {
    if (params.mode != LLAMA_KV_EVICT_MODE_MASK) {
        return kq_mask;
    }

    const auto & li = layers[layer_index.at(source_layer(il))];

    GGML_ASSERT(kq_mask->ne[2] == li.n_head);
    GGML_ASSERT(kq_mask->type == li.bias->type);

    const int64_t n_kv = kq_mask->ne[0];
    const int64_t ns   = kq_mask->ne[3];

    ggml_tensor * bias = ggml_view_4d(ctx, li.bias, n_kv, 1, li.n_head, ns,
            li.bias->nb[1], li.bias->nb[2], li.bias->nb[3], s0*li.bias->nb[3]);

    return ggml_add(ctx, kq_mask, bias);
}

void llama_kv_evict_state::set_capture_idxs(ggml_tensor * dst, const llama_ubatch & ubatch) {
    GGML_ASSERT(ggml_backend_buffer_is_host(dst->buffer));
    GGML_ASSERT(dst->ne[0] == (int64_t) ubatch.n_tokens);

    int64_t * data = (int64_t *) dst->data;

    const int64_t w     = params.n_window;
    const int64_t trash = (int64_t) n_seq_max*w;

    // tokens of each sequence in this ubatch: only the last w of them are captured
    std::vector<int64_t> remaining(n_seq_max, 0);
    for (uint32_t i = 0; i < ubatch.n_tokens; ++i) {
        const llama_seq_id s = ubatch.seq_id[i][0];
        if (s >= 0 && (uint32_t) s < n_seq_max) {
            remaining[s]++;
        }
    }

    for (uint32_t i = 0; i < ubatch.n_tokens; ++i) {
        const llama_seq_id s = ubatch.seq_id[i][0];

        data[i] = trash;

        if (s < 0 || (uint32_t) s >= n_seq_max) {
            continue;
        }

        if (remaining[s]-- > w) {
            continue;
        }

        const int64_t order = n_captured[s]++;
        const int64_t slot  = order % w;

        rings[s][slot].pos   = ubatch.pos[i];
        rings[s][slot].order = order;

        data[i] = (int64_t) s*w + slot;
    }
}

void * llama_kv_evict_state::mask_plane(ggml_tensor * dst, std::vector<uint8_t> & plane) {
    if (dst->ne[2] == 1) {
        return dst->data;
    }
    plane.resize((size_t) dst->ne[0]*dst->ne[1]*dst->ne[3]*ggml_element_size(dst));
    return plane.data();
}

void llama_kv_evict_state::replicate_mask(ggml_tensor * dst, const std::vector<uint8_t> & plane) {
    if (plane.empty()) {
        return;
    }
    const size_t  size = (size_t) dst->ne[0]*dst->ne[1]*ggml_element_size(dst);
    const int64_t nh   = dst->ne[2];

    for (int64_t s = 0; s < dst->ne[3]; ++s) {
        for (int64_t h = 0; h < nh; ++h) {
            memcpy((char *) dst->data + (s*nh + h)*size, plane.data() + s*size, size);
        }
    }
}

void llama_kv_evict_state::set_bias(layer_info & li, uint32_t strm, uint32_t cell, int32_t h_kv, bool evicted) {
    li.evicted[((size_t) strm*kv_size + cell)*li.n_head_kv + h_kv] = evicted ? 1 : 0;

    const int32_t g = li.n_head / li.n_head_kv;

    for (int32_t q = h_kv*g; q < (h_kv + 1)*g; ++q) {
        const size_t off = ((size_t) strm*li.n_head + q)*kv_size + cell;

        if (li.bias->type == GGML_TYPE_F16) {
            ((ggml_fp16_t *) li.bias->data)[off] = ggml_fp32_to_fp16(evicted ? -INFINITY : 0.0f);
        } else {
            ((float *) li.bias->data)[off] = evicted ? -INFINITY : 0.0f;
        }
    }
}

void llama_kv_evict_state::on_cells_filled(uint32_t strm, const std::vector<uint32_t> & idxs) {
    if (params.mode != LLAMA_KV_EVICT_MODE_MASK) {
        return;
    }

    for (const uint32_t cell : idxs) {
        uint8_t & dirty = cell_dirty[(size_t) strm*kv_size + cell];
        if (!dirty) {
            continue;
        }
        for (auto & li : layers) {
            for (int32_t h = 0; h < li.n_head_kv; ++h) {
                set_bias(li, strm, cell, h, false);
            }
        }
        dirty = 0;
    }
}

void llama_kv_evict_state::on_seq_rm(llama_seq_id seq_id, llama_pos p0, llama_pos p1) {
    if (internal_rm) {
        return; // the eviction frees main-cache cells: the window queries stay valid
    }
    if (p0 < 0) {
        p0 = 0;
    }
    if (p1 < 0) {
        p1 = std::numeric_limits<llama_pos>::max();
    }

    const bool whole = p0 == 0 && p1 == std::numeric_limits<llama_pos>::max();

    for (uint32_t s = 0; s < n_seq_max; ++s) {
        if (seq_id >= 0 && (uint32_t) seq_id != s) {
            continue;
        }
        if (!whole && seqs[s].compacted) {
            continue; // allow_seq_rm let a partial removal through: the range holds none of its positions
        }
        for (auto & slot : rings[s]) {
            if (slot.pos >= p0 && slot.pos < p1) {
                slot.pos   = -1;
                slot.order = -1;
            }
        }
        if (whole) {
            seq_evicted[s] = 0;
            drop_pools((llama_seq_id) s);
        }
    }
}

void llama_kv_evict_state::on_seq_keep(llama_seq_id seq_id) {
    // llama_kv_cache::seq_keep frees the cells of the other sequences of seq_id's stream
    const uint32_t strm = kv.get_stream(seq_id);
    for (uint32_t s = 0; s < n_seq_max; ++s) {
        if ((llama_seq_id) s == seq_id || kv.get_stream((llama_seq_id) s) != strm) {
            continue;
        }
        for (auto & slot : rings[s]) {
            slot = ring_slot();
        }
        seq_evicted[s] = 0;
        drop_pools((llama_seq_id) s);
    }
}

void llama_kv_evict_state::on_clear() {
    for (uint32_t s = 0; s < n_seq_max; ++s) {
        drop_pools((llama_seq_id) s);
    }

    for (uint32_t s = 0; s < n_seq_max; ++s) {
        for (auto & slot : rings[s]) {
            slot = ring_slot();
        }
        seq_evicted[s] = 0;
    }

    if (params.mode == LLAMA_KV_EVICT_MODE_MASK) {
        for (auto & li : layers) {
            std::fill(li.evicted.begin(), li.evicted.end(), 0);
            memset(li.bias->data, 0, ggml_nbytes(li.bias));
        }
        std::fill(cell_dirty.begin(), cell_dirty.end(), 0);
    }
}

bool llama_kv_evict_state::is_seq_evicted(llama_seq_id seq_id) const {
    return seq_id >= 0 && (uint32_t) seq_id < n_seq_max && seq_evicted[seq_id];
}

bool llama_kv_evict_state::allow_seq_cp(llama_seq_id seq_id_src, llama_seq_id seq_id_dst) const {
    if (!allow_seq_edit(seq_id_src, "seq_cp") || !allow_seq_edit(seq_id_dst, "seq_cp")) {
        return false;
    }
    if (is_seq_evicted(seq_id_src) && kv.get_stream(seq_id_src) != kv.get_stream(seq_id_dst)) {
        LLAMA_LOG_ERROR("%s: sequence %d has per-head evictions that cannot be copied into another stream: "
                "seq_cp ignored\n", __func__, seq_id_src);
        return false;
    }
    return true;
}

std::vector<uint32_t> llama_kv_evict_state::seq_cells(llama_seq_id seq_id) const {
    const auto & cells = kv.get_cells(seq_id);

    std::vector<std::pair<llama_pos, uint32_t>> tmp;
    for (uint32_t i = 0; i < cells.size(); ++i) {
        if (!cells.is_empty(i) && cells.seq_has(i, seq_id)) {
            tmp.emplace_back(cells.pos_get(i), i);
        }
    }
    std::sort(tmp.begin(), tmp.end());

    std::vector<uint32_t> res;
    res.reserve(tmp.size());
    for (const auto & p : tmp) {
        res.push_back(p.second);
    }
    return res;
}

bool llama_kv_evict_state::collect_window(
        llama_seq_id seq_id, std::vector<int32_t> & slots, std::vector<llama_pos> & q_pos) const {
    std::vector<std::pair<int64_t, int32_t>> win; // (capture order, slot)
    for (int32_t r = 0; r < params.n_window; ++r) {
        if (rings[seq_id][r].pos >= 0) {
            win.emplace_back(rings[seq_id][r].order, r);
        }
    }
    std::sort(win.begin(), win.end());
    if (win.empty()) {
        LLAMA_LOG_ERROR("%s: no query captured for sequence %d since llama_kv_evict_init\n", __func__, seq_id);
        return false;
    }
    slots.clear();
    q_pos.clear();
    for (const auto & w : win) {
        slots.push_back(w.second);
        q_pos.push_back(rings[seq_id][w.second].pos);
    }
    return true;
}

void llama_kv_evict_state::copy_queries(
        size_t l, llama_seq_id seq_id, const std::vector<int32_t> & slots, std::vector<float> & out) const {
    const auto & li = layers[l];

    const int32_t d     = li.n_embd_head_k;
    const int32_t nh    = li.n_head;
    const int32_t n_win = (int32_t) slots.size();

    out.resize((size_t) nh*n_win*d);
    const float * ring = (const float *) li.ring->data;
    for (int32_t i = 0; i < n_win; ++i) {
        const float * row = ring + ((size_t) seq_id*params.n_window + slots[i])*li.ring->ne[0];
        for (int32_t h = 0; h < nh; ++h) {
            memcpy(out.data() + ((size_t) h*n_win + i)*d, row + (size_t) h*d, d*sizeof(float));
        }
    }
}

void llama_kv_evict_state::fill_layer_info(llama_kv_evict_layer & out, size_t l, int32_t n_win, const float * q,
        const llama_pos * q_pos, llama_kv_evict_head * heads) const {
    const auto & li = layers[l];

    out.il            = li.il;
    out.n_head        = li.n_head;
    out.n_head_kv     = li.n_head_kv;
    out.n_embd_head_k = li.n_embd_head_k;
    out.type_k        = li.k->type;
    out.kq_scale      = li.kq_scale;
    out.n_window      = n_win;
    out.q             = q;
    out.q_pos         = q_pos;
    out.heads         = heads;
}

int32_t llama_kv_evict_state::run_callback(llama_kv_evict_info & info,
        const std::vector<std::vector<llama_kv_evict_head>> & heads,
        const std::vector<std::vector<std::vector<int32_t>>> & keep_buf) const {
    const int32_t rc = params.callback(&info, params.user_data);
    if (rc == 1) {
        return LLAMA_KV_EVICT_DECLINED;
    }
    if (rc != 0) {
        LLAMA_LOG_ERROR("%s: the eviction callback failed with %d\n", __func__, rc);
        return LLAMA_KV_EVICT_ERR_CALLBACK;
    }

    // validate the whole plan before anything changes
    for (size_t l = 0; l < heads.size(); ++l) {
        for (size_t h = 0; h < heads[l].size(); ++h) {
            const auto & hd = heads[l][h];
            bool ok = hd.n_keep >= 1 && hd.n_keep <= hd.n_kv && hd.keep == keep_buf[l][h].data();
            for (int32_t i = 0; ok && i < hd.n_keep; ++i) {
                ok = hd.keep[i] >= 0 && hd.keep[i] < hd.n_kv && (i == 0 || hd.keep[i] > hd.keep[i - 1]);
            }
            if (!ok) {
                LLAMA_LOG_ERROR("%s: invalid plan for layer %d, KV head %zu: n_keep = %d of n_kv = %d, "
                        "indices must be strictly increasing in [0, n_kv) and written into the keep buffer\n",
                        __func__, layers[l].il, h, hd.n_keep, hd.n_kv);
                return LLAMA_KV_EVICT_ERR_PLAN;
            }
        }
    }

    return LLAMA_KV_EVICT_OK;
}

int32_t llama_kv_evict_state::begin_round(
        llama_seq_id seq_id, const char * func, const char * why_shared, evict_round & r) const {
    const auto & cells = kv.get_cells(seq_id);

    r.strm = kv.get_stream(seq_id);
    r.cidx = seq_cells(seq_id);

    if (r.cidx.empty()) {
        LLAMA_LOG_ERROR("%s: sequence %d holds no token\n", func, seq_id);
        return LLAMA_KV_EVICT_ERR_SEQ;
    }
    for (const uint32_t c : r.cidx) {
        if (cells.seq_count(c) > 1) {
            LLAMA_LOG_ERROR("%s: sequence %d shares cells with another sequence (llama_memory_seq_cp in a unified "
                    "cache): %s\n", func, seq_id, why_shared);
            return LLAMA_KV_EVICT_ERR_STATE;
        }
    }

    if (!collect_window(seq_id, r.slots, r.q_pos)) {
        return LLAMA_KV_EVICT_ERR_WINDOW;
    }
    r.n_win = (int32_t) r.slots.size();

    const size_t n_layer = layers.size();

    r.q_buf.resize(n_layer);
    r.heads.resize(n_layer);
    r.k_buf.resize(n_layer);
    r.keep_buf.resize(n_layer);
    for (size_t l = 0; l < n_layer; ++l) {
        const int32_t n_head_kv = layers[l].n_head_kv;

        copy_queries(l, seq_id, r.slots, r.q_buf[l]);

        r.heads[l].resize(n_head_kv);
        r.k_buf[l].resize(n_head_kv);
        r.keep_buf[l].resize(n_head_kv);
    }

    return LLAMA_KV_EVICT_OK;
}

int32_t llama_kv_evict_state::call_round(llama_seq_id seq_id, evict_round & r) const {
    const size_t n_layer = layers.size();

    std::vector<llama_kv_evict_layer> info_layers(n_layer);
    for (size_t l = 0; l < n_layer; ++l) {
        for (size_t h = 0; h < r.heads[l].size(); ++h) {
            auto & hd = r.heads[l][h];
            auto & kp = r.keep_buf[l][h];
            kp.resize(hd.n_kv);
            for (int32_t i = 0; i < hd.n_kv; ++i) {
                kp[i] = i;
            }
            hd.keep   = kp.data();
            hd.n_keep = hd.n_kv;
        }
        fill_layer_info(info_layers[l], l, r.n_win, r.q_buf[l].data(), r.q_pos.data(), r.heads[l].data());
    }

    llama_kv_evict_info info;
    info.seq_id  = seq_id;
    info.n_layer = (int32_t) n_layer;
    info.layers  = info_layers.data();
    info.uniform = r.uniform;

    return run_callback(info, r.heads, r.keep_buf);
}

int32_t llama_kv_evict_state::evict_seq(llama_seq_id seq_id) {
    if (seq_id < 0 || (uint32_t) seq_id >= n_seq_max) {
        LLAMA_LOG_ERROR("%s: seq_id %d out of range [0, %u)\n", __func__, seq_id, n_seq_max);
        return LLAMA_KV_EVICT_ERR_SEQ;
    }
    if (params.mode == LLAMA_KV_EVICT_MODE_COMPACT) {
        return evict_seq_compact(seq_id);
    }

    evict_round r;
    const int32_t rc0 = begin_round(seq_id, __func__, "per-head eviction would hide them from both", r);
    if (rc0 != LLAMA_KV_EVICT_OK) {
        return rc0;
    }

    const auto & cells = kv.get_cells(seq_id);

    const size_t n_layer = layers.size();

    // per layer and head: entry -> cell, positions
    std::vector<std::vector<std::vector<uint32_t>>> ent_cell(n_layer);
    std::vector<std::vector<std::vector<llama_pos>>> ent_pos(n_layer);

    for (size_t l = 0; l < n_layer; ++l) {
        auto & li = layers[l];

        const int32_t d  = li.n_embd_head_k;

        const size_t row_k  = ggml_row_size(li.k->type, d);
        const char * k_base = (const char *) li.k->data + r.strm*li.k->nb[2];

        ent_cell[l].resize(li.n_head_kv);
        ent_pos[l].resize(li.n_head_kv);

        for (int32_t h = 0; h < li.n_head_kv; ++h) {
            auto & ec = ent_cell[l][h];
            auto & ep = ent_pos[l][h];
            for (const uint32_t c : r.cidx) {
                if (!li.evicted[((size_t) r.strm*kv_size + c)*li.n_head_kv + h]) {
                    ec.push_back(c);
                    ep.push_back(cells.pos_get(c));
                }
            }
            if (ec.size() != r.cidx.size()) {
                r.uniform = false;
            }

            auto & hd = r.heads[l][h];
            hd.n_kv = (int32_t) ec.size();
            hd.pos  = ep.data();

            bool contiguous = true;
            for (size_t i = 1; i < ec.size(); ++i) {
                if (ec[i] != ec[0] + i) {
                    contiguous = false;
                    break;
                }
            }
            if (contiguous && !ec.empty()) {
                hd.k        = k_base + ec[0]*li.k->nb[1] + h*row_k;
                hd.nb_entry = li.k->nb[1];
            } else {
                auto & kb = r.k_buf[l][h];
                kb.resize(ec.size()*row_k);
                for (size_t i = 0; i < ec.size(); ++i) {
                    memcpy(kb.data() + i*row_k, k_base + ec[i]*li.k->nb[1] + h*row_k, row_k);
                }
                hd.k        = kb.data();
                hd.nb_entry = row_k;
            }
        }
    }

    const int32_t rc = call_round(seq_id, r);
    if (rc != LLAMA_KV_EVICT_OK) {
        return rc;
    }

    // apply (MASK mode): hide every entry not kept
    bool any = false;
    for (size_t l = 0; l < n_layer; ++l) {
        auto & li = layers[l];
        for (int32_t h = 0; h < li.n_head_kv; ++h) {
            const auto & hd = r.heads[l][h];
            const auto & ec = ent_cell[l][h];
            int32_t j = 0;
            for (int32_t i = 0; i < hd.n_kv; ++i) {
                if (j < hd.n_keep && hd.keep[j] == i) {
                    j++;
                    continue;
                }
                set_bias(li, r.strm, ec[i], h, true);
                cell_dirty[(size_t) r.strm*kv_size + ec[i]] = 1;
                any = true;
            }
        }
    }
    if (any) {
        seq_evicted[seq_id] = 1;
    }

    // a token that no (layer, KV head) holds any more leaves the sequence, exactly as with llama_memory_seq_rm:
    // its cell is freed and reused by the next tokens
    for (const uint32_t c : r.cidx) {
        bool held = false;
        for (size_t l = 0; l < n_layer && !held; ++l) {
            const auto & li = layers[l];
            for (int32_t h = 0; h < li.n_head_kv; ++h) {
                if (!li.evicted[((size_t) r.strm*kv_size + c)*li.n_head_kv + h]) {
                    held = true;
                    break;
                }
            }
        }
        if (!held) {
            const llama_pos p = cells.pos_get(c);
            kv.seq_rm(seq_id, p, p + 1);
        }
    }

    return LLAMA_KV_EVICT_OK;
}

int32_t llama_kv_evict_state::get_stats(llama_seq_id seq_id, llama_kv_evict_stats & out) const {
    if (seq_id < 0 || (uint32_t) seq_id >= n_seq_max) {
        return LLAMA_KV_EVICT_ERR_SEQ;
    }
    if (seqs[seq_id].compacted) {
        return get_stats_compact(seq_id, out);
    }

    const uint32_t strm = kv.get_stream(seq_id);
    const auto cidx = seq_cells(seq_id);

    out = {};
    out.n_tokens = (int64_t) cidx.size();

    for (const auto & li : layers) {
        const size_t row_k = ggml_row_size(li.k->type, li.n_embd_head_k);
        const size_t row_v = ggml_row_size(type_v, li.n_embd_head_v);

        out.n_entries_full += out.n_tokens*li.n_head_kv;
        out.bytes_used     += out.n_tokens*li.n_head_kv*(int64_t) (row_k + row_v);

        for (const uint32_t c : cidx) {
            for (int32_t h = 0; h < li.n_head_kv; ++h) {
                const bool ev = !li.evicted.empty() && li.evicted[((size_t) strm*kv_size + c)*li.n_head_kv + h];
                if (!ev) {
                    out.n_entries++;
                    out.bytes_kept += (int64_t) (row_k + row_v);
                }
            }
        }
    }

    return LLAMA_KV_EVICT_OK;
}

//
// graph input
//

void llm_graph_input_kv_evict::set_input(const llama_ubatch * ubatch) {
    if (q_idxs && q_idxs->buffer) {
        state->set_capture_idxs(q_idxs, *ubatch);
    }
    if (compact) {
        state->set_compact_inputs(*this, *ubatch);
    }
}

bool llm_graph_input_kv_evict::can_reuse(const llm_graph_params & params) {
    // the compact path's shapes change with every token: rebuild
    return !compact && !state->is_compact() && q_idxs->ne[0] == (int64_t) params.ubatch.n_tokens;
}

llm_graph_input_kv_evict * llama_kv_evict_build_input(
        llm_graph_result * res, ggml_context * ctx, const llama_ubatch & ubatch, llama_kv_evict_state * state) {
    if (state == nullptr) {
        return nullptr;
    }

    auto inp = std::make_unique<llm_graph_input_kv_evict>(state);

    inp->q_idxs = ggml_new_tensor_1d(ctx, GGML_TYPE_I64, ubatch.n_tokens);
    ggml_set_input(inp->q_idxs);
    ggml_set_name(inp->q_idxs, "evict_q_idxs");

    if (state->is_compact()) {
        state->build_compact_inputs(*inp, ctx, ubatch);
    }

    return (llm_graph_input_kv_evict *) res->add_input(std::move(inp));
}

ggml_tensor * llama_kv_evict_build_attn(
        llm_graph_input_kv_evict * evict, ggml_context * ctx, ggml_cgraph * gf, const llama_kv_cache_context * mctx,
        ggml_tensor * q, ggml_tensor * k_cur, ggml_tensor * v_cur, ggml_tensor * kq_mask, ggml_tensor * sinks,
        float kq_scale, int32_t il, const std::function<ggml_tensor * (ggml_tensor * kq_mask)> & build_attn_mha) {
    if (evict == nullptr || !evict->state->has_layer(il)) {
        return build_attn_mha(kq_mask);
    }
    GGML_ASSERT((k_cur == nullptr) == (v_cur == nullptr));

    // capture the window queries (the layer owning the K/V: its queries score its entries), mask the entries
    // evicted from this layer's K/V (a layer sharing another layer's KV: that layer's mask)
    if (k_cur != nullptr) {
        ggml_build_forward_expand(gf, evict->state->build_capture(ctx, q, evict->q_idxs, il, kq_scale));
    }
    kq_mask = evict->state->build_layer_mask(ctx, kq_mask, il, mctx->get_s0());

    if (!evict->compact) {
        return build_attn_mha(kq_mask);
    }

    // the tokens of compacted sequences are attended in their per-head pools, the others as usual
    ggml_tensor * cur_main = evict->has_main ? build_attn_mha(kq_mask) : nullptr;
    return evict->state->build_attn_compact(ctx, gf, *evict, cur_main, q, k_cur, v_cur, sinks, il, kq_scale);
}

//
// public API
//

static llama_kv_cache * llama_kv_evict_find_cache(llama_context * ctx, std::string & msg) {
    llama_memory_t mem = ctx->get_memory();
    if (mem == nullptr) {
        msg = "the context has no memory (KV cache)";
        return nullptr;
    }
    if (auto * kv = dynamic_cast<llama_kv_cache *>(mem)) {
        return kv;
    }
    if (auto * iswa = dynamic_cast<llama_kv_cache_iswa *>(mem)) {
        return iswa->get_base(); // the full-attention layers; SWA layers keep their window
    }
    if (auto * hybrid = dynamic_cast<llama_memory_hybrid *>(mem)) {
        return hybrid->get_mem_attn(); // the attention layers; the recurrent / conv state is left alone
    }
    if (auto * hybrid = dynamic_cast<llama_memory_hybrid_iswa *>(mem)) {
        return hybrid->get_mem_attn()->get_base(); // its full-attention layers; SWA and recurrent ones untouched
    }
    msg = "the context's memory is recurrent: per-head eviction needs a KV cache";
    return nullptr;
}

struct llama_kv_evict_params llama_kv_evict_default_params(void) {
    llama_kv_evict_params p;
    p.n_window  = 32;
    p.mode      = LLAMA_KV_EVICT_MODE_COMPACT;
    p.callback  = nullptr;
    p.user_data = nullptr;
    p.n_headroom = 256;
    return p;
}

int32_t llama_kv_evict_init(struct llama_context * ctx, struct llama_kv_evict_params params) {
    if (ctx == nullptr || params.callback == nullptr || params.n_window < 1 || params.n_headroom < 0) {
        LLAMA_LOG_ERROR("%s: NULL context or callback, n_window < 1 or n_headroom < 0\n", __func__);
        return LLAMA_KV_EVICT_ERR_ARG;
    }
    if (params.mode != LLAMA_KV_EVICT_MODE_MASK && params.mode != LLAMA_KV_EVICT_MODE_COMPACT) {
        LLAMA_LOG_ERROR("%s: unknown mode %d\n", __func__, params.mode);
        return LLAMA_KV_EVICT_ERR_ARG;
    }

    std::string msg;
    llama_kv_cache * kv = llama_kv_evict_find_cache(ctx, msg);
    if (kv == nullptr) {
        LLAMA_LOG_ERROR("%s: %s\n", __func__, msg.c_str());
        return LLAMA_KV_EVICT_ERR_UNSUPPORTED;
    }
    if (kv->get_evict() != nullptr) {
        LLAMA_LOG_ERROR("%s: eviction is already enabled on this context\n", __func__);
        return LLAMA_KV_EVICT_ERR_STATE;
    }

    const auto & cparams = ctx->get_cparams();

    int32_t err = LLAMA_KV_EVICT_OK;
    auto st = llama_kv_evict_state::create(*kv, ctx->get_model().hparams, params, cparams.n_seq_max,
            cparams.flash_attn, err, msg);
    if (!st) {
        LLAMA_LOG_ERROR("%s: %s\n", __func__, msg.c_str());
        return err;
    }

    kv->set_evict(std::move(st));
    ctx->request_sched_reserve();

    return LLAMA_KV_EVICT_OK;
}

uint32_t llama_kv_evict_graph_nodes(const llama_memory_i * mem) {
    const llama_kv_cache * kv = dynamic_cast<const llama_kv_cache *>(mem);
    if (kv == nullptr) {
        if (const auto * iswa = dynamic_cast<const llama_kv_cache_iswa *>(mem)) {
            kv = iswa->get_base();
        } else if (const auto * hybrid = dynamic_cast<const llama_memory_hybrid *>(mem)) {
            kv = hybrid->get_mem_attn();
        } else if (const auto * hybrid_iswa = dynamic_cast<const llama_memory_hybrid_iswa *>(mem)) {
            kv = hybrid_iswa->get_mem_attn()->get_base();
        }
    }
    if (kv == nullptr || kv->get_evict() == nullptr) {
        return 0;
    }
    return kv->get_evict()->graph_nodes();
}

static llama_kv_evict_state * llama_kv_evict_get(llama_context * ctx) {
    std::string msg;
    llama_kv_cache * kv = llama_kv_evict_find_cache(ctx, msg);
    return kv ? kv->get_evict() : nullptr;
}

int32_t llama_kv_evict_seq(struct llama_context * ctx, llama_seq_id seq_id) {
    if (ctx == nullptr) {
        return LLAMA_KV_EVICT_ERR_ARG;
    }
    llama_kv_evict_state * st = llama_kv_evict_get(ctx);
    if (st == nullptr) {
        LLAMA_LOG_ERROR("%s: llama_kv_evict_init was not called on this context\n", __func__);
        return LLAMA_KV_EVICT_ERR_NOT_INIT;
    }

    ctx->synchronize();

    return st->evict_seq(seq_id);
}

int32_t llama_kv_evict_get_stats(struct llama_context * ctx, llama_seq_id seq_id, struct llama_kv_evict_stats * out) {
    if (ctx == nullptr || out == nullptr) {
        return LLAMA_KV_EVICT_ERR_ARG;
    }
    llama_kv_evict_state * st = llama_kv_evict_get(ctx);
    if (st == nullptr) {
        return LLAMA_KV_EVICT_ERR_NOT_INIT;
    }

    ctx->synchronize();

    return st->get_stats(seq_id, *out);
}

const char * llama_kv_evict_status_str(int32_t status) {
    switch (status) {
        case LLAMA_KV_EVICT_OK:              return "LLAMA_KV_EVICT_OK";
        case LLAMA_KV_EVICT_DECLINED:        return "LLAMA_KV_EVICT_DECLINED";
        case LLAMA_KV_EVICT_ERR_ARG:         return "LLAMA_KV_EVICT_ERR_ARG";
        case LLAMA_KV_EVICT_ERR_NOT_INIT:    return "LLAMA_KV_EVICT_ERR_NOT_INIT";
        case LLAMA_KV_EVICT_ERR_UNSUPPORTED: return "LLAMA_KV_EVICT_ERR_UNSUPPORTED";
        case LLAMA_KV_EVICT_ERR_SEQ:         return "LLAMA_KV_EVICT_ERR_SEQ";
        case LLAMA_KV_EVICT_ERR_WINDOW:      return "LLAMA_KV_EVICT_ERR_WINDOW";
        case LLAMA_KV_EVICT_ERR_CALLBACK:    return "LLAMA_KV_EVICT_ERR_CALLBACK";
        case LLAMA_KV_EVICT_ERR_PLAN:        return "LLAMA_KV_EVICT_ERR_PLAN";
        case LLAMA_KV_EVICT_ERR_STATE:       return "LLAMA_KV_EVICT_ERR_STATE";
        default:                             return "unknown status";
    }
}
